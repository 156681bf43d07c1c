"""Benchmark: what one ``/metrics`` scrape of a relay node costs with 1, 2 and 4 Granian
workers, each worker holding idle streams on a few topics.

With more than one worker, the worker a scrape reaches asks its siblings over Unix sockets
and merges their answers (``relay.scrape``); with one, it answers alone, which is also what a
scrape of one worker's own port (the other way to reach every worker) would cost. Starts its
own redis-server and relays on free loopback ports; prints a Markdown table.

    .venv/bin/python -m bench.metrics_scrape --workers 1 2 4 --streams 200 --scrapes 200

Load goes to 127.0.0.1 only; counts are bounded by the arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
from pathlib import Path

from relay.harness.servers import RedisServer, Relay
from relay.web import client
from relay.web.client import EventStream


async def measure(url: str, streams: int, scrapes: int) -> tuple[list[float], int, int]:
    held: list[EventStream] = []
    try:
        for n in range(streams):
            held.append(await client.stream(f"{url}/v1/streams/t{n % 10}/events"))
        await asyncio.sleep(0.5)
        times = []
        body = b""
        for _ in range(scrapes):
            t0 = time.perf_counter()
            response = await client.request("GET", url + "/metrics", timeout=10)
            times.append(time.perf_counter() - t0)
            body = response.body
        workers = len({line.split('worker="', 1)[1].split('"', 1)[0]
                       for line in body.decode().splitlines()
                       if line.startswith("ssedge_streams_open{")})
        return times, len(body), workers
    finally:
        for es in held:
            es.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    print(f"{platform.python_implementation()} {platform.python_version()}, "
          f"{args.streams} idle streams on 10 topics, {args.scrapes} scrapes one after another")
    print("| workers | workers in each scrape | p50 | p99 | max | body |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis", fsync="no")
        try:
            for workers in args.workers:
                relay = Relay(Path(tmp), redis, "bench", workers=workers,
                              max_connections=args.streams + 100)
                try:
                    times, size, seen = asyncio.run(measure(relay.url, args.streams,
                                                            args.scrapes))
                finally:
                    relay.stop()
                q = statistics.quantiles(times, n=100)
                print(f"| {workers} | {seen} | {q[49] * 1000:.2f} ms | {q[98] * 1000:.2f} ms "
                      f"| {max(times) * 1000:.2f} ms | {size / 1024:.1f} KiB |")
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
