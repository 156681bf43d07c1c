"""History pages for a relay: from the replay service, else from Redis; each fetched once.

Pages are asked for as ``after=ID&limit=PAGE`` with the same page size on every relay, so
every client resuming from the same id asks for the same URLs: Varnish collapses them across
relays, and ``Replayer`` collapses them inside the process: one fetch is shared by every
stream that wants the page while it is under way (single flight), and pages are kept a while
in a byte-bounded cache, full pages (which never change) until evicted, short ones (which
reach the stream's head) for ``replay_open_max_age_s``. Serving an older short page is safe:
each page says through which id it is complete, and ``resume.CatchUp`` reads on after it
(``fresh``: from Redis, past every cache) until a page goes through the floor it noted.

If the replay service does not answer, the relay reads the same page from Redis with the
same code the replay service runs (``history.read_page``), counted in
``ssedge_replay_fallbacks_total``.

Private topics (``SSEDGE_PRIVATE_TOPICS``) are always read from Redis: the replay service
would want a reader's token for them, and a relay holds no token of its own (only keys that
verify). Their readers were authorised when their stream opened; pages are still shared
between them inside the process.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import quote

from relay.node.metrics import Metrics
from relay.protocol import ids
from relay.protocol.resume import HistoryPage
from relay.storage import clients, history
from relay.web import client

_Key = tuple[str, int, bool]  # topic, after, fresh


class Replayer:
    def __init__(self, url: str, redis: clients.Client, metrics: Metrics, *, page_size: int,
                 timeout: float, cache_bytes: int, open_ttl: float, page_bytes: int = 1 << 20,
                 private: Callable[[str], bool] = lambda topic: False) -> None:
        self._url = url.rstrip("/")
        self._private = private
        self._redis = redis
        self._metrics = metrics
        self.page_size = page_size
        self.page_bytes = page_bytes
        self._timeout = timeout
        self._inflight: dict[_Key, asyncio.Future[HistoryPage]] = {}
        # (topic, after) -> (page, expires at, size); oldest first for eviction
        self._cache: OrderedDict[tuple[str, int], tuple[HistoryPage, float, int]] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached_bytes = 0
        self._open_ttl = open_ttl

    async def page(self, topic: str, after: int, *, fresh: bool = False) -> HistoryPage:
        """The page after ``after``; ``fresh``: read from Redis now, past every cache (a page
        served before proved too old)."""
        if not fresh:
            hit = self._cache.get((topic, after))
            if hit is not None:
                if hit[1] > time.monotonic():
                    self._cache.move_to_end((topic, after))
                    self._metrics.replay_cache_hits += 1
                    return hit[0]
                self._evict((topic, after))
        key = (topic, after, fresh)
        fetch = self._inflight.get(key)
        if fetch is None:
            fetch = asyncio.ensure_future(self._fetch(topic, after, fresh))
            self._inflight[key] = fetch
            fetch.add_done_callback(lambda done: self._settle(key, done))
        else:
            self._metrics.replay_shared += 1
        # shielded: a stream that goes away does not cancel the fetch others wait for
        return await asyncio.shield(fetch)

    def forget(self, topic: str) -> None:
        """Drop the topic's cached pages (its stream went back: they describe another one)."""
        for key in [k for k in self._cache if k[0] == topic]:
            self._evict(key)

    def _settle(self, key: _Key, fetch: asyncio.Future[HistoryPage]) -> None:
        self._inflight.pop(key, None)
        if fetch.cancelled() or fetch.exception() is not None:
            return
        page = fetch.result()
        if page.count == 0:
            return  # an empty page says nothing lasting
        size = sum(len(f) for _, f in page.frames)
        if size > self._cache_bytes:
            return
        # a full page never changes; any other (one that stopped at the byte bound too: it
        # cannot be told from one that reached the head) is kept briefly
        ttl = float("inf") if page.count >= self.page_size else self._open_ttl
        cache_key = key[:2]
        self._evict(cache_key)
        self._cache[cache_key] = (page, time.monotonic() + ttl, size)
        self._cached_bytes += size
        while self._cached_bytes > self._cache_bytes:
            self._evict(next(iter(self._cache)))

    def _evict(self, key: tuple[str, int]) -> None:
        entry = self._cache.pop(key, None)
        if entry is not None:
            self._cached_bytes -= entry[2]

    async def _fetch(self, topic: str, after: int, fresh: bool) -> HistoryPage:
        if self._url and not fresh and not self._private(topic):
            url = (f"{self._url}/v1/replay/{quote(topic, safe='')}"
                   f"?after={ids.format(after)}&limit={self.page_size}")
            self._metrics.replay_fetches += 1
            try:
                response = await client.request("GET", url, timeout=self._timeout)
                if response.status == 200:
                    through = response.headers.get("x-ssedge-through")
                    return HistoryPage(history.split(response.body),
                                       int(response.headers["x-ssedge-count"]),
                                       ids.parse(through) if through else None)
            except (OSError, TimeoutError, ValueError, KeyError):
                pass
            self._metrics.replay_fallbacks += 1
        if fresh:
            self._metrics.replay_fresh_reads += 1
        self._metrics.redis_history_reads += 1
        page, bad = await history.read_page(self._redis, topic, after, self.page_size,
                                            max_bytes=self.page_bytes)
        self._metrics.invalid_entries += bad
        return HistoryPage(history.split(page.body), page.count, page.through)
