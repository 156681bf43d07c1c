"""Benchmark: concurrent streams through one varnishd, and the same clients on a relay directly.

For each N: open N event streams (through Varnish, then straight to the relay), wait until all
are subscribed, read threads and resident memory of varnishd's child and of the relay worker,
publish one event and time until every stream has it, then close everything. Prints its
conditions and writes a Markdown report.

    .venv/bin/python -m bench.edge_streams --streams 1000 4000

Load goes to 127.0.0.1 only; counts and durations are bounded by the arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from relay.harness.servers import RedisServer, Relay, Varnish, metrics
from relay.web import client

TOKEN = "bench"


def proc_status(pid: int) -> tuple[int, int]:
    """(resident KiB, threads) of a process."""
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads


def child_pid(parent: int) -> int:
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout
    return int(out.split()[0])


class Stream:
    def __init__(self) -> None:
        self.buffer = b""
        self.writer: asyncio.StreamWriter | None = None
        self.reader: asyncio.StreamReader | None = None

    async def open(self, port: int, path: str) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        while b"retry:" not in self.buffer:
            chunk = await self.reader.read(4096)
            if not chunk:
                raise ConnectionError("closed before retry")
            self.buffer += chunk

    async def wait_for(self, marker: bytes) -> None:
        assert self.reader is not None
        while marker not in self.buffer:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer = self.buffer[-200:] + chunk

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def measure(n: int, port: int, relay: Relay, label: str,
                  varnish: Varnish | None) -> dict[str, object]:
    relay_worker = child_pid(relay.pid)
    varnish_child = child_pid(varnish.process.pid) if varnish else None
    relay0 = proc_status(relay_worker)
    varnish0 = proc_status(varnish_child) if varnish_child else (0, 0)
    topic = f"cap-{label}-{n}"
    streams = [Stream() for _ in range(n)]
    t0 = time.perf_counter()
    opened = await asyncio.gather(*(s.open(port, f"/v1/streams/{topic}/events") for s in streams),
                                  return_exceptions=True)
    connect_s = time.perf_counter() - t0
    failures = [o for o in opened if o is not None]
    await asyncio.sleep(2)  # let memory settle
    relay1 = proc_status(relay_worker)
    varnish1 = proc_status(varnish_child) if varnish_child else (0, 0)
    response = await client.request("POST", f"{relay.url}/v1/streams/{topic}/events",
                                    headers={"Authorization": f"Bearer {TOKEN}"},
                                    json_body={"data": "x" * 100})
    marker = f"id: {response.json()['id']}\n".encode()
    t1 = time.perf_counter()
    live = [s for s, o in zip(streams, opened, strict=True) if o is None]
    delivered = await asyncio.gather(*(asyncio.wait_for(s.wait_for(marker), 30) for s in live),
                                     return_exceptions=True)
    deliver_s = time.perf_counter() - t1
    for s in streams:
        s.close()
    got = sum(1 for d in delivered if d is None)
    row: dict[str, object] = {
        "path": label,
        "streams": n,
        "opened": n - len(failures),
        "connect_all_s": round(connect_s, 2),
        "event_reached": got,
        "fanout_one_event_s": round(deliver_s, 3),
        "relay_rss_per_stream_kib": round((relay1[0] - relay0[0]) / max(1, n), 1),
    }
    if varnish:
        stats = varnish.stats()
        row.update({
            "varnish_threads": varnish1[1],
            "varnish_threads_per_stream": round((varnish1[1] - varnish0[1]) / max(1, n), 2),
            "varnish_rss_mib": round(varnish1[0] / 1024, 1),
            "varnish_rss_per_stream_kib": round((varnish1[0] - varnish0[0]) / max(1, n), 1),
            "varnish_queued_sessions": stats.get("MAIN.sess_queued", 0),
            "varnish_dropped_sessions": stats.get("MAIN.sess_dropped", 0),
        })
    if failures:
        row["first_error"] = repr(failures[0])
    # Varnish notices a departed client only when it next writes to it (a heartbeat): until
    # then the backend stream and its two threads stay. Measure that, and start the next
    # round clean.
    t2 = time.perf_counter()
    while time.perf_counter() - t2 < 60:
        if (await metrics(relay.url))["ssedge_streams_open"] == 0:
            break
        await asyncio.sleep(0.5)
    row["released_after_close_s"] = round(time.perf_counter() - t2, 1)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--report", default="docs/results/edge-streams.md")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        redis = RedisServer(directory / "redis")
        relay = replay = varnish = None
        try:
            replay = Relay(directory, redis, TOKEN, command="replay")
            relay = Relay(directory, redis, TOKEN, max_connections=20_000, topic_linger_s=0)
            varnish = Varnish(directory / "varnish", [relay], replay)
            conditions = (f"streams {args.streams}, one topic, 1 relay process (1 Granian "
                          f"worker, heartbeat 15 s), varnish/params as shipped, "
                          f"{os.cpu_count()} CPUs")
            print("conditions:", conditions, flush=True)
            for n in args.streams:
                for label, port, v in (("varnish", varnish.port, varnish),
                                       ("direct", relay.port, None)):
                    row = asyncio.run(measure(n, port, relay, label, v))
                    print(row, flush=True)
                    rows.append(row)
        finally:
            for server in (varnish, relay, replay):
                if server is not None:
                    server.stop()
            redis.stop()
    keys = list(dict.fromkeys(k for row in rows for k in row))
    table = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n" + "\n".join(
        "| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in rows)
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(
        f"# Concurrent streams through one varnishd\n\n"
        f"- command: `python -m bench.edge_streams {' '.join(sys.argv[1:])}`\n"
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n"
        f"- machine: {os.cpu_count()} CPUs, {platform.platform()}\n"
        f"- conditions: {conditions}\n\n{table}\n")
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
