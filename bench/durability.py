"""Benchmark: what each durability setting costs a publisher.

For each setting it starts its own redis-server (and, for ``replica``, a replica of it) and a
relay on free loopback ports, then runs ``--publishers`` concurrent publishers, each sending
one request after another for ``--seconds`` (one event per request, then batches of 100),
and measures acknowledged events per second and the latency of a publish.

Settings, from least to most durable (docs/RELIABILITY.md says what each keeps):

- ``off``: no AOF, no RDB: a Redis restart loses everything;
- ``everysec``: AOF, fsync once a second (Redis's default, ``make up``'s default);
- ``always``: AOF, fsync before every reply (``ssedge up --fsync always``);
- ``replica``: AOF everysec plus a replica, publishes wait for it (``SSEDGE_PUBLISH_REPLICAS=1``).

    .venv/bin/python -m bench.durability --seconds 5 --publishers 8

Load goes to 127.0.0.1 only; counts and durations are bounded by the arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from relay.harness.servers import RedisServer, Relay
from relay.web import client

TOKEN = "bench"
SETTINGS = ("off", "everysec", "always", "replica")


async def _load(url: str, publishers: int, seconds: float, batch: int) -> tuple[int, list[float]]:
    """(events acknowledged, latency of each publish in seconds)."""
    body = [{"data": "x" * 160}] * batch
    latencies: list[float] = []
    acked = 0
    deadline = time.monotonic() + seconds

    async def one() -> None:
        nonlocal acked
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            response = await client.request(
                "POST", f"{url}/v1/streams/durability/events",
                headers={"Authorization": f"Bearer {TOKEN}"},
                json_body=body if batch > 1 else body[0])
            latencies.append(time.perf_counter() - t0)
            assert response.status == 201, response.body
            acked += batch

    await asyncio.gather(*(one() for _ in range(publishers)))
    return acked, latencies


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def run_one(setting: str, directory: Path, publishers: int, seconds: float) -> list[str]:
    primary = RedisServer(directory / "primary", "everysec" if setting == "replica" else setting)
    replica = RedisServer(directory / "replica", "everysec", replica_of=primary) \
        if setting == "replica" else None
    relay = None
    try:
        if replica is not None:
            deadline = time.monotonic() + 10
            while "master_link_status:up" not in replica.cli("INFO", "replication"):
                assert time.monotonic() < deadline, "replica did not sync"
                time.sleep(0.1)
        relay = Relay(directory, primary, TOKEN,
                      publish_replicas=1 if replica is not None else 0)
        rows = []
        for batch in (1, 100):
            acked, lat = asyncio.run(_load(relay.url, publishers, seconds, batch))
            rows.append(f"| {setting} | {batch} | {acked / seconds:,.0f} | "
                        f"{_pct(lat, 50):.2f} | {_pct(lat, 99):.2f} | {len(lat):,} |")
            print(rows[-1], flush=True)
        return rows
    finally:
        if relay is not None:
            relay.stop()
        if replica is not None:
            replica.stop()
        primary.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--out", default="docs/results/durability.md")
    args = parser.parse_args()
    disk = subprocess.run(["df", "-hT", tempfile.gettempdir()], capture_output=True,
                          text=True).stdout.splitlines()[-1]
    redis = subprocess.run(["redis-server", "--version"], capture_output=True,
                           text=True).stdout.split()[2]
    conditions = (f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
                  f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}"
                  f", Redis {redis}, data on: {disk}")
    print(f"conditions: {conditions}\n{args.publishers} publishers, {args.seconds:g} s per row",
          flush=True)
    header = ["| setting | events per request | acknowledged events/s | p50 ms | p99 ms | "
              "requests |", "|---|---|---|---|---|---|"]
    print("\n".join(header))
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ssedge-durability-") as tmp:
        for setting in args.settings.split(","):
            rows += run_one(setting, Path(tmp) / setting, args.publishers, args.seconds)
    command = " ".join(["python -m bench.durability", *sys.argv[1:]])
    Path(args.out).write_text(
        f"# Durability settings: what a publish costs\n\n`{command}`\n\n{conditions}; "
        f"{args.publishers} concurrent publishers (one request each at a time, a new "
        f"connection per request), {args.seconds:g} s per row, one relay, ~190 B events. "
        "What each setting keeps is in docs/RELIABILITY.md.\n\n" + "\n".join(header + rows)
        + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
