"""The feed is chosen by the settings, by name (relay/node/feed/backends.py), and each backend
registers what only it reports; nothing is connected to by making one."""

from __future__ import annotations

import asyncio
from typing import Any

from relay.node.feed import backends
from relay.node.feed.cluster import ClusterFeed
from relay.node.feed.single import RedisFeed
from relay.node.metrics import Metrics
from relay.node.topics import Hub
from relay.settings import load
from relay.storage import streams as store


def _make(environ: dict[str, str]) -> tuple[Any, Metrics]:
    settings = load(environ)
    metrics = Metrics("t")
    hub = Hub(ring_events=10, ring_bytes=1 << 20, max_topics=10, key_of=store.stream_key)

    async def make() -> Any:  # the feed's events belong to a running loop
        return backends.make(settings, hub, object(), metrics)

    return asyncio.run(make()), metrics


def test_one_redis_gets_the_redis_feed() -> None:
    environ = {"SSEDGE_REDIS_URL": "redis://127.0.0.1:1/0"}
    assert backends.backend(load(environ)) == "redis"
    feed, metrics = _make(environ)
    assert isinstance(feed, RedisFeed)
    assert "feed_cluster_nodes" not in metrics.render().decode()


def test_a_cluster_gets_the_cluster_feed_and_its_gauge() -> None:
    environ = {"SSEDGE_REDIS_CLUSTER": "127.0.0.1:7000,127.0.0.1:7001"}
    assert backends.backend(load(environ)) == "cluster"
    feed, metrics = _make(environ)
    assert isinstance(feed, ClusterFeed)
    assert "ssedge_feed_cluster_nodes" in metrics.render().decode()


def test_every_backend_is_named() -> None:
    assert set(backends.BACKENDS) == {"redis", "cluster"}
