"""Benchmark: the feed on a local 3-primary Redis Cluster next to the feed on one Redis.

For each backend (one redis-server; a 3-primary cluster without replicas; the same cluster
with one replica each and publishes that wait for it), in one relay-like process: a hub of
T topics, all primed, read by the feed; then

- **wake latency**: one event XADDed at a time to a topic (round robin over T), the time
  until the feed has put it into the topic's ring (N samples, p50/p99);
- **read throughput**: a separate publisher process XADDs pipelined batches into all T topics
  for D seconds as fast as it can; the feed's events read per second, its Redis round trips,
  and its CPU per 1,000 events;
- **publish**: ``store.publish`` of one event (MULTI/EXEC, and WAIT 1 on the replicated
  cluster), 20 at a time, for D seconds: publishes per second and p50/p99.

    .venv/bin/python -m bench.cluster_feed --topics 100 --seconds 5

Everything runs on 127.0.0.1, bounded by the arguments; all processes are stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import multiprocessing
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from relay.harness.cluster import LocalCluster
from relay.harness.processes import free_port
from relay.harness.servers import RedisServer
from relay.node.feed.cluster import ClusterFeed
from relay.node.feed.single import RedisFeed
from relay.node.metrics import Metrics
from relay.node.topics import Hub, Subscription
from relay.storage import clients
from relay.storage import streams as store


def _publisher(target: str, cluster: bool, topics: list[str], seconds: float,
               out: Any) -> None:
    """XADD batches of 10 per topic, pipelined, until the time is up; the count to ``out``."""
    import redis
    from redis.cluster import ClusterNode, RedisCluster

    if cluster:
        r: Any = RedisCluster(startup_nodes=[ClusterNode(h, p)  # type: ignore[no-untyped-call]
                                             for h, p in clients.seed_nodes(target)])
    else:
        r = redis.Redis.from_url(target)
    keys = [store.stream_key(t) for t in topics]
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pipe = r.pipeline(transaction=False)
        for key in keys:
            for _ in range(10):
                pipe.xadd(key, {"d": "x" * 100})
        pipe.execute()
        sent += 10 * len(keys)
    out.put(sent)


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def measure(name: str, redis: clients.Client, feed_of: Any, target: str, cluster: bool,
                  topics: list[str], samples: int, seconds: float,
                  replicas: int) -> dict[str, Any]:
    metrics = Metrics("bench")
    hub = Hub(ring_events=1000, ring_bytes=16 << 20, max_topics=10_000,
              key_of=store.stream_key)
    feed = feed_of(hub, redis, metrics)
    running = asyncio.ensure_future(feed.run())
    await asyncio.sleep(0.5)
    watched = [hub.get(t) for t in topics]
    for topic in watched:
        await feed.prime(topic)
    await asyncio.sleep(0.5)

    # one reader per topic, as a stream is: parked, it is resumed when the feed appends
    readers = [Subscription(topic, topic.ring.head, None) for topic in watched]
    for topic, reader in zip(watched, readers, strict=True):
        hub.subscribe(topic, reader)
    latency = []
    for n in range(samples):
        topic, reader = watched[n % len(watched)], readers[n % len(watched)]
        reader.cursor = topic.ring.head
        waiter = topic.park(reader)
        start = time.perf_counter()
        await redis.xadd(topic.key, {"d": b"x"})
        await asyncio.wait_for(waiter, 5)
        latency.append((time.perf_counter() - start) * 1000)
        await asyncio.sleep(0.002)

    before_in, before_reads = metrics.events_in, metrics.feed_reads
    cpu0, wall0 = time.process_time(), time.monotonic()
    ctx = multiprocessing.get_context("spawn")
    out: Any = ctx.Queue()
    proc = ctx.Process(target=_publisher, args=(target, cluster, topics, seconds,
                                                            out))
    proc.start()
    sent = await asyncio.to_thread(out.get)
    proc.join()
    deadline = time.monotonic() + 30
    while metrics.events_in - before_in < sent and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    wall = time.monotonic() - wall0
    cpu = time.process_time() - cpu0
    read = metrics.events_in - before_in
    reads = metrics.feed_reads - before_reads

    pub_lat: list[float] = []
    end = time.monotonic() + seconds

    async def publisher(i: int) -> None:
        n = i
        while time.monotonic() < end:
            start = time.perf_counter()
            await store.publish(redis, topics[n % len(topics)], [(b"x" * 100, None)],
                                maxlen=0, max_age_s=0, replicas=replicas)
            pub_lat.append((time.perf_counter() - start) * 1000)
            n += 20

    await asyncio.gather(*(publisher(i) for i in range(20)))
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    await feed.close()
    return {
        "name": name, "wake_p50": _pct(latency, 0.5), "wake_p99": _pct(latency, 0.99),
        "sent": sent, "read": read, "rate": read / wall, "reads": reads,
        "cpu_per_k": cpu / max(read, 1) * 1000 * 1000, "wall": wall,
        "pub_rate": len(pub_lat) / seconds, "pub_p50": _pct(pub_lat, 0.5),
        "pub_p99": _pct(pub_lat, 0.99),
    }


async def run(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    topics = [f"bench-{n:04d}" for n in range(args.topics)]
    results = []

    single = RedisServer(tmp / "single")
    try:
        r = clients.client(single.url)
        results.append(await measure(
            "one redis-server", r,
            lambda hub, redis, m: RedisFeed(hub, redis, m, url=single.url, block_ms=5000,
                                       read_count=1000, send_max=256 * 1024),
            single.url, False, topics, args.samples, args.seconds, 0))
        await r.aclose()
    finally:
        single.stop()

    for replicas in (0, 1):
        n = 3 * (1 + replicas)
        cluster = LocalCluster(tmp / f"cluster-{replicas}", [free_port() for _ in range(n)],
                               bus_ports=[free_port() for _ in range(n)], replicas=replicas)
        try:
            await asyncio.to_thread(cluster.start)
            rc = clients.cluster_client(cluster.seeds)
            await rc.initialize()
            results.append(await measure(
                f"cluster, 3 primaries, {replicas} replica each"
                + (", publish waits for 1" if replicas else ""), rc,
                lambda hub, redis, m: ClusterFeed(hub, redis, m, block_ms=5000,
                                                  read_count=1000, send_max=256 * 1024),
                cluster.seeds, True, topics, args.samples, args.seconds, replicas))
            await rc.aclose()
        finally:
            cluster.stop()
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--topics", type=int, default=100)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--out", default="docs/results/cluster-feed.md")
    args = p.parse_args()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory(prefix="ssedge-bench-") as tmp:
        results = asyncio.run(run(args, Path(tmp)))
    lines = [
        "# Feed on a Redis Cluster",
        "",
        f"`.venv/bin/python -m bench.cluster_feed --topics {args.topics} --seconds "
        f"{args.seconds:g} --samples {args.samples}`, {started}, {platform.machine()}, "
        f"{multiprocessing.cpu_count()} CPUs, Python {sys.version.split()[0]}; everything on "
        "127.0.0.1 (Redis, publisher and the feed share the CPUs).",
        "",
        "| backend | wake p50 / p99 | events read/s (publisher flat out) | XREAD commands | "
        "feed CPU per 1,000 events | publishes/s (20 at a time) | publish p50 / p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['wake_p50']:.2f} / {r['wake_p99']:.2f} ms | "
            f"{r['rate']:,.0f} ({r['read']:,} of {r['sent']:,} in {r['wall']:.1f} s) | "
            f"{r['reads']:,} | {r['cpu_per_k']:.1f} ms | {r['pub_rate']:,.0f} | "
            f"{r['pub_p50']:.2f} / {r['pub_p99']:.2f} ms |")
    report = "\n".join(lines) + "\n"
    print(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
