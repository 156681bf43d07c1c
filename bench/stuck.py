"""Benchmark: what clients that never read cost a relay, beside clients that do.

Starts its own redis-server and relay (one worker) on free loopback ports, opens READERS
ordinary streams and STUCK connections that send their request and never read (4 KiB receive
buffers), then publishes MB megabytes of events. Measures the relay's resident memory (summed
over its worker processes) before the stuck clients came and at its peak, checks that every
reader got every event once and in order, and prints memory per stuck client.

    .venv/bin/python -m bench.stuck --stuck 300 --readers 20 --mb 30

Load goes to 127.0.0.1 only; counts, sizes and durations are bounded by the arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.peers import machine
from relay.harness.servers import RedisServer, Relay, metrics, publish, rss_bytes
from relay.protocol.ids import parse
from relay.protocol.wire import Event
from relay.web import client
from relay.web.client import EventStream

TOKEN = "bench"
MIB = 1024 * 1024


@dataclass
class Result:
    before: int = 0  # RSS (bytes) with the readers only
    idle: int = 0  # with the stuck clients connected, before the publishing
    peak: int = 0  # the highest RSS while the stuck clients were connected
    published: list[str] = field(default_factory=list)
    complete: int = 0  # readers that got every event, once, in order
    seconds: float = 0.0  # publishing took this long
    drops: float = 0.0  # streams the sweeper closed
    latency_p99: float = 0.0  # publish to arrival, over every reader


class Reader:
    def __init__(self, es: EventStream) -> None:
        self.es = es
        self.ids: list[str] = []
        self.latency: list[float] = []

    async def run(self) -> None:
        while not self.es.ended:
            got = [e for e in await self.es.read_chunk() if isinstance(e, Event)]
            now = time.time()
            for e in got:
                self.ids.append(e.id or "")
                self.latency.append(now - float(e.data.split(" ", 1)[0]))


def rss(relay: Relay) -> int:
    return sum(rss_bytes(pid) for pid in relay.worker_pids())


def stuck_connection(port: int, path: str) -> socket.socket:
    """A client that asks for a stream and never reads it."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return s


async def run(relay: Relay, *, stuck: int, readers: int, mb: float, warm_mb: float,
              event_bytes: int, batch: int, rate_mb: float) -> Result:
    topic = "hostile"
    path = f"/v1/streams/{topic}/events"
    out = Result()
    padding = "x" * max(0, event_bytes - 32)

    async def publish_bytes(total: float) -> None:
        interval = batch * event_bytes / (rate_mb * MIB)
        sent = 0
        while sent < total:
            body = [{"data": f"{time.time()} {padding}"} for _ in range(batch)]
            out.published.extend(await publish(relay.url, TOKEN, topic, body))
            sent += batch * event_bytes
            out.peak = max(out.peak, rss(relay))
            await asyncio.sleep(interval)

    streams = [await client.stream(relay.url + path) for _ in range(readers)]
    for es in streams:
        while es.decoder.retry is None:
            await es.read_chunk()
    rs = [Reader(es) for es in streams]
    tasks = [asyncio.ensure_future(r.run()) for r in rs]
    await publish_bytes(warm_mb * MIB)  # warm: the ring full, buffers, allocator
    await asyncio.sleep(0.5)
    out.before = out.peak = rss(relay)
    drops = (await metrics(relay.url))["ssedge_backlog_drops_total"]
    socks = [stuck_connection(relay.port, path) for _ in range(stuck)]
    try:
        await asyncio.sleep(0.5)
        out.idle = rss(relay)
        mark = [len(r.latency) for r in rs]
        began = time.monotonic()
        await publish_bytes(mb * MIB)
        out.seconds = time.monotonic() - began
        deadline = time.monotonic() + 20
        while (any(len(r.ids) < len(out.published) for r in rs)
               and time.monotonic() < deadline):
            out.peak = max(out.peak, rss(relay))
            await asyncio.sleep(0.1)
        out.peak = max(out.peak, rss(relay))
        out.drops = (await metrics(relay.url))["ssedge_backlog_drops_total"] - drops
    finally:
        for s in socks:
            s.close()
    for task in tasks:
        task.cancel()
    lat = [x for r, m in zip(rs, mark, strict=True) for x in r.latency[m:]]
    out.latency_p99 = statistics.quantiles(lat, n=100)[98] if len(lat) > 1 else 0.0
    out.complete = sum(r.ids == out.published and r.ids == sorted(set(r.ids), key=parse)
                       for r in rs)
    for es in streams:
        es.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stuck", type=int, default=300)
    parser.add_argument("--readers", type=int, default=20)
    parser.add_argument("--mb", type=float, default=30.0, help="megabytes published")
    parser.add_argument("--warm-mb", type=float, default=17.0,
                        help="megabytes published first (16 MiB fill the ring by default)")
    parser.add_argument("--event-bytes", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=16, help="events per publish")
    parser.add_argument("--rate-mb", type=float, default=3.0, help="MB published a second")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a relay setting (client_queue_bytes=65536, say)")
    parser.add_argument("--report", type=Path, help="append a Markdown line here")
    args = parser.parse_args(argv)
    settings: dict[str, Any] = dict(s.split("=", 1) for s in args.setting)
    with tempfile.TemporaryDirectory(prefix="ssedge-hostile-") as tmp:
        redis = RedisServer(Path(tmp) / "redis", fsync="no")
        relay = None
        try:
            relay = Relay(Path(tmp), redis, TOKEN, max_connections=args.stuck + args.readers + 100,
                          **settings)
            res = asyncio.run(run(relay, stuck=args.stuck, readers=args.readers, mb=args.mb,
                                  warm_mb=args.warm_mb, event_bytes=args.event_bytes,
                                  batch=args.batch,
                                  rate_mb=args.rate_mb))
        finally:
            if relay is not None:
                relay.stop()
            redis.stop()
    growth = res.peak - res.before
    per = " (the baseline: no stuck client)"
    if args.stuck:
        per = (f" = {growth / args.stuck / 1024:.0f} KiB per stuck client (connected, before "
               f"publishing: {(res.idle - res.before) / args.stuck / 1024:.0f})")
    line = (f"{datetime.date.today()} | {args.stuck} stuck + {args.readers} readers, "
            f"{args.mb:g} MB in {args.event_bytes} B events x{args.batch} at {args.rate_mb:g} "
            f"MB/s ({res.seconds:.1f} s) {' '.join(args.setting)} | RSS {res.before / MIB:.0f} "
            f"-> peak {res.peak / MIB:.0f} MiB, growth {growth / MIB:.1f} MiB{per} | "
            f"{res.drops:.0f} closed by the sweeper | readers complete {res.complete}/"
            f"{args.readers}, p99 {res.latency_p99 * 1000:.0f} ms | {machine()}")
    print(line)
    if args.report:
        with args.report.open("a") as f:
            f.write(f"| {line} |\n")


if __name__ == "__main__":
    main()
