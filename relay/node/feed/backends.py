"""Which feed a relay process runs, chosen by its settings: each backend is named here, made
through the feed's written interface (``base.FeedBase``) and registers what only it reports.

- ``redis``: one Redis (or its replica, ``SSEDGE_REDIS_READ_URL``): ``single.RedisFeed``;
- ``cluster``: a Redis Cluster (``SSEDGE_REDIS_CLUSTER`` names its seeds):
  ``cluster.ClusterFeed``, one reader per primary.

A third backend (another store, another way to read one) is one more module beside these and
one more row in ``BACKENDS``; the node asks nothing of a feed that ``FeedBase`` does not state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from relay.node import fanout
from relay.node.feed.base import FeedBase
from relay.node.feed.cluster import ClusterFeed
from relay.node.feed.single import RedisFeed
from relay.node.metrics import Metrics
from relay.node.topics import Hub
from relay.settings import Settings

#: a backend: the settings, the topics, the client of the Redis it reads, the metrics
Make = Callable[[Settings, Hub, Any, Metrics], FeedBase]


def _send_max(settings: Settings) -> int:
    """The most one send to a stream carries (``fanout.send_bytes``)."""
    return fanout.send_bytes(settings.client_queue_bytes, settings.send_max_bytes)


def _redis(settings: Settings, hub: Hub, redis: Any, metrics: Metrics) -> FeedBase:
    return RedisFeed(hub, redis, metrics, url=settings.read_url,
                     block_ms=settings.feed_block_ms, read_count=settings.feed_read_count,
                     send_max=_send_max(settings), retention_maxlen=settings.retention_maxlen,
                     retention_max_age_s=settings.retention_max_age_s,
                     check_every=settings.feed_check == "every")


def _cluster(settings: Settings, hub: Hub, redis: Any, metrics: Metrics) -> FeedBase:
    feed = ClusterFeed(hub, redis, metrics, block_ms=settings.feed_block_ms,
                       read_count=settings.feed_read_count, send_max=_send_max(settings),
                       retention_maxlen=settings.retention_maxlen,
                       retention_max_age_s=settings.retention_max_age_s,
                     check_every=settings.feed_check == "every")
    metrics.gauge("feed_cluster_nodes", "Redis Cluster primaries the feed is reading now.",
                  lambda: feed.nodes_connected)
    return feed


BACKENDS: dict[str, Make] = {"redis": _redis, "cluster": _cluster}


def backend(settings: Settings) -> str:
    """The name of the feed these settings call for (what ``clients.connect`` connects to)."""
    return "cluster" if settings.redis_cluster else "redis"


def make(settings: Settings, hub: Hub, redis: Any, metrics: Metrics) -> FeedBase:
    """The feed these settings call for, reading ``redis`` into ``hub``'s rings."""
    return BACKENDS[backend(settings)](settings, hub, redis, metrics)
