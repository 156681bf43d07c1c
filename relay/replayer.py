"""History pages for a relay: from the replay service, else from Redis; each fetched once.

Pages are asked for as ``after=ID&limit=PAGE`` with the same page size on every relay, so
every client resuming from the same id asks for the same URLs: Varnish collapses them across
relays, and ``Replayer`` collapses them inside the process: one fetch is shared by every
stream that wants the page while it is under way (single flight), and pages are kept a while
in a byte-bounded cache, full pages (which never change) until evicted, short ones (which
reach the stream's head) for ``replay_open_max_age_s``. Serving an older short page is safe:
``resume.CatchUp`` reads on after it until it reaches the stream's position in the ring.

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

from relay import client, history, ids, store
from relay.metrics import Metrics

Frames = list[tuple[int, bytes]]


class Replayer:
    def __init__(self, url: str, redis: store.Client, metrics: Metrics, *, page_size: int,
                 timeout: float, cache_bytes: int, open_ttl: float,
                 private: Callable[[str], bool] = lambda topic: False) -> None:
        self._url = url.rstrip("/")
        self._private = private
        self._redis = redis
        self._metrics = metrics
        self.page_size = page_size
        self._timeout = timeout
        self._inflight: dict[tuple[str, int], asyncio.Future[tuple[Frames, int]]] = {}
        # key -> (frames, count, expires at, size); oldest first for eviction
        self._cache: OrderedDict[tuple[str, int], tuple[Frames, int, float, int]] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached_bytes = 0
        self._open_ttl = open_ttl

    async def page(self, topic: str, after: int) -> tuple[Frames, int]:
        """(id, frame) pairs of the page after ``after``, and its number of stream entries."""
        key = (topic, after)
        hit = self._cache.get(key)
        if hit is not None:
            if hit[2] > time.monotonic():
                self._cache.move_to_end(key)
                self._metrics.replay_cache_hits += 1
                return hit[0], hit[1]
            self._evict(key)
        fetch = self._inflight.get(key)
        if fetch is None:
            fetch = asyncio.ensure_future(self._fetch(topic, after))
            self._inflight[key] = fetch
            fetch.add_done_callback(lambda done: self._settle(key, done))
        else:
            self._metrics.replay_shared += 1
        # shielded: a stream that goes away does not cancel the fetch others wait for
        return await asyncio.shield(fetch)

    def _settle(self, key: tuple[str, int], fetch: asyncio.Future[tuple[Frames, int]]) -> None:
        self._inflight.pop(key, None)
        if fetch.cancelled() or fetch.exception() is not None:
            return
        frames, count = fetch.result()
        if count == 0:
            return  # an empty page says nothing lasting
        size = sum(len(f) for _, f in frames)
        if size > self._cache_bytes:
            return
        ttl = float("inf") if count >= self.page_size else self._open_ttl
        self._cache[key] = (frames, count, time.monotonic() + ttl, size)
        self._cached_bytes += size
        while self._cached_bytes > self._cache_bytes:
            self._evict(next(iter(self._cache)))

    def _evict(self, key: tuple[str, int]) -> None:
        entry = self._cache.pop(key, None)
        if entry is not None:
            self._cached_bytes -= entry[3]

    async def _fetch(self, topic: str, after: int) -> tuple[Frames, int]:
        if self._url and not self._private(topic):
            url = (f"{self._url}/v1/replay/{quote(topic, safe='')}"
                   f"?after={ids.format(after)}&limit={self.page_size}")
            self._metrics.replay_fetches += 1
            try:
                response = await client.request("GET", url, timeout=self._timeout)
                if response.status == 200:
                    return history.split(response.body), int(response.headers["x-ssedge-count"])
            except (OSError, TimeoutError, ValueError, KeyError):
                pass
            self._metrics.replay_fallbacks += 1
        self._metrics.redis_history_reads += 1
        page, bad = await history.read_page(self._redis, topic, after, self.page_size)
        self._metrics.invalid_entries += bad
        return history.split(page.body), page.count
