"""The replay service: closed ranges of a topic's stream as cacheable event-stream bodies.

``GET /v1/replay/{topic}?after=ID&until=ID&limit=N`` answers the entries after ``after``
(default 0-0: from the oldest retained) up to ``until`` (default: the stream's end), at most
``limit`` of them, framed byte for byte as the relays frame live events. A page that can never
change (full, or ending at an ``until`` the stream has passed) is cacheable for a year and
immutable; a page that reaches the stream's head lives ``replay_open_max_age_s``. Varnish
caches both and collapses identical concurrent requests into one fetch.

Headers for relays and operators: ``X-Ssedge-Count`` (entries in the page),
``X-Ssedge-Last-Id`` (the last entry's id, when any), ``X-Ssedge-Through`` (every entry after
``after`` up to this id is in the page: its last entry when it stopped at ``limit`` or at
``replay_page_bytes``, else the stream's last id when it was read), ``X-Ssedge-Reset: 1`` when
the page starts with an ``ssedge.reset``. A page that reaches the stream's head can change, and
a cache may keep it a moment: ``X-Ssedge-Through`` lets a reader tell how far it holds.

A private topic's pages need a reader's token, as its stream does (``relay.web.auth``), and are
``private, no-store``; relays read private topics' history from Redis themselves.

With ``SSEDGE_REDIS_READ_URL`` pages are read from a replica. An ``after`` the replica has not
reached yet but the primary holds (a reader from another region) is no unknown id: the page
waits for the replica (``SSEDGE_REPLICA_WAIT_S``, asking again every ``_REPLICA_POLL_S``),
then, if it is still behind, the answer is 503 with ``Retry-After``, never a reset.
"""

from __future__ import annotations

import asyncio
import time

from redis.exceptions import RedisError

from relay import __version__, logs, scrape
from relay import settings as settings_mod
from relay.prometheus import CONTENT_TYPE, Exposition, Histogram, ProcessMetrics
from relay.protocol import ids
from relay.settings import Settings
from relay.storage import clients, history, replica
from relay.web import auth
from relay.web.errors import BadRequest, MethodNotAllowed, NotFound, Unavailable
from relay.web.http import Receive, Request, Responder, Scope, Send, answer, parse_topic

IMMUTABLE = "public, max-age=31536000, immutable"
# how often a page waiting for the replica asks it again: a few cheap XINFOs per second, and
# Varnish collapses the readers who wait for the same page into one
_REPLICA_POLL_S = 0.05
# a page is one pipelined XINFO + XRANGE: milliseconds, more for large pages
PAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class ReplayMetrics(ProcessMetrics):
    """The replay service's own numbers (not a relay's: it holds no streams)."""

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self.pages = 0
        self.page_events = 0
        self.closed_pages = 0
        self.invalid_entries = 0
        self.page_seconds = Histogram(PAGE_BUCKETS)

    def samples(self, out: Exposition) -> None:
        out.counter("replay_pages_total", "History pages answered.", self.pages)
        out.counter("replay_page_events_total", "Events in the pages answered.",
                    self.page_events)
        out.counter("replay_closed_pages_total",
                    "Pages answered that can never change (cached for a year).",
                    self.closed_pages)
        out.counter("invalid_entries_total", "Stream entries with an unusable field.",
                    self.invalid_entries)
        out.histogram("replay_page_duration_seconds",
                      "History pages answered: seconds from the request to the answer.",
                      self.page_seconds)


class ReplayApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        node = settings.node_name or f"{settings.replay_host}:{settings.replay_port}"
        self.metrics = ReplayMetrics(node)
        self.responder = Responder(settings.cors_origin, self.metrics.responses,
                                   settings.access_log,
                                   settings_mod.proxy_networks(settings.trusted_proxies))
        self.redis = clients.connect_pair(settings)
        self.auth = auth.Authority(settings)
        self.auth.register_metrics(self.metrics)
        self.replica = replica.Watch(self.redis) if self.redis.replica else None
        self._watching: asyncio.Task[None] | None = None
        if self.replica is not None:
            self.replica.register(self.metrics)
        self.workers = scrape.Workers(self.metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await self.auth.start()
                    await self.workers.start()
                    if self.replica is not None:
                        self._watching = asyncio.ensure_future(self.replica.run())
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.workers.stop()
                    await self.auth.stop()
                    if self._watching is not None:
                        self._watching.cancel()
                    await self.redis.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        request = Request(scope)
        await answer(self.responder, request, send, self.route(request, send))

    async def route(self, request: Request, send: Send) -> None:
        parts = request.parts
        if request.method == "OPTIONS":
            return await self.responder.preflight(send, request)
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed("GET, HEAD, OPTIONS")
        if parts[:2] == ["v1", "replay"] and len(parts) == 3:
            return await self.replay(request, parts[2], send)
        if parts == ["healthz"]:
            return await self.responder.json(send, 200, {"status": "ok", "version": __version__},
                                             {"cache-control": "no-store"})
        if parts == ["readyz"]:
            return await self.readyz(send)
        if parts == ["metrics"]:
            return await self.responder.body(send, 200, await self.workers.gather(), {
                "content-type": CONTENT_TYPE, "cache-control": "no-store"})
        raise NotFound(f"no such resource: {request.path}")

    async def replay(self, request: Request, topic: str, send: Send) -> None:
        s = self.settings
        parse_topic(topic)
        access = await self.auth.read_access(request, topic)
        after = _id(request, "after") or ids.ZERO
        until = _id(request, "until")
        raw_limit = request.query.get("limit", str(s.replay_page))
        if not raw_limit.isascii() or not raw_limit.isdigit() or not (
            1 <= int(raw_limit) <= s.replay_limit_max
        ):
            raise BadRequest(f"limit is a whole number from 1 to {s.replay_limit_max}")
        if until is not None and until < after:
            raise BadRequest("until is before after")
        try:
            page, bad = await history.read_page(self.redis.read, topic, after, int(raw_limit),
                                                until, s.replay_page_bytes)
            if page.reset and page.count == 0 and page.through < after and self.redis.replica:
                # an unknown id to the replica: the primary may have it (another region's)
                page, bad = await self._after_replica(topic, after, int(raw_limit), until)
        except (RedisError, OSError):
            raise Unavailable("Redis is not reachable", 1) from None
        m = self.metrics
        m.pages += 1
        m.page_events += page.count
        m.closed_pages += page.closed
        m.invalid_entries += bad
        headers = page.headers()
        cache = IMMUTABLE if page.closed else f"public, max-age={s.replay_open_max_age_s}"
        if access.private:
            cache = "private, no-store"  # its readers' alone: no shared cache may keep it
        m.page_seconds.observe(time.monotonic() - request.started)
        await self.responder.cached(send, request, page.body, cache, headers)

    async def _after_replica(self, topic: str, after: int, limit: int,
                             until: int | None) -> tuple[history.Page, int]:
        """The page after an id the replica does not hold: an ``unknown`` reset only when the
        primary does not hold it either; else the page once the replica has it, read again
        after each poll; still behind after ``replica_wait_s``: a 503 to retry."""
        s = self.settings
        deadline = time.monotonic() + s.replica_wait_s
        while True:
            where, _ = await replica.locate(self.redis, topic, after)
            if where is not replica.Where.BEHIND:
                # HERE: it arrived meanwhile; UNKNOWN: the reset is the answer
                return await history.read_page(self.redis.read, topic, after, limit, until,
                                               s.replay_page_bytes)
            if time.monotonic() >= deadline:
                raise Unavailable("this region's replica has not reached this id yet; "
                                  "retry", 1)
            await asyncio.sleep(_REPLICA_POLL_S)

    async def readyz(self, send: Send) -> None:
        try:
            await asyncio.wait_for(clients.ping(self.redis.read), 1.0)
        except (RedisError, OSError, TimeoutError):
            raise Unavailable("not ready: Redis is not reachable", 1) from None
        await self.responder.json(send, 200, {"status": "ready"}, {"cache-control": "no-store"})


def _id(request: Request, name: str) -> int | None:
    text = request.query.get(name, "")
    if not text:
        return None
    try:
        return ids.parse(text)
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from None


def create_app() -> ReplayApp:
    """Granian's factory: settings come from the ``SSEDGE_*`` environment."""
    settings = settings_mod.load()
    logs.setup(settings.log_level, settings.log_format)
    return ReplayApp(settings)
