"""Benchmark: N clients reconnect at once with the same stale Last-Event-ID.

Starts its own redis-server, replay service and relay on free loopback ports, publishes a
history, then opens N streams at once with an id older than the relay's ring, and measures
the time until every client has received the last event, and how many XRANGE calls Redis
saw (INFO commandstats). Prints its conditions and writes a Markdown report.

    .venv/bin/python -m bench.reconnect_storm --clients 5000 --behind 1000

Load goes to 127.0.0.1 only; counts and durations are bounded by the arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench.peers import machine
from relay.harness.servers import RedisServer, Relay, metrics
from relay.web import client

TOKEN = "bench"


async def publish(url: str, topic: str, n: int, size: int) -> list[str]:
    out: list[str] = []
    payload = "x" * size
    while len(out) < n:
        batch = min(1000, n - len(out))
        response = await client.request(
            "POST", f"{url}/v1/streams/{topic}/events",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json_body=[{"data": payload}] * batch,
        )
        assert response.status == 201, response.body
        out += response.json()["ids"]
    return out


async def one_client(host: str, port: int, path: str, last_event_id: str, want: bytes,
                     timeout: float) -> tuple[float, int]:
    """Connect, then read raw bytes until the last id shows up: (seconds, bytes)."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nLast-Event-ID: {last_event_id}\r\n"
                 f"Accept: text/event-stream\r\n\r\n".encode())
    tail = b""
    total = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    raise ConnectionError("stream ended early")
                total += len(chunk)
                if want in tail + chunk[: len(want) + 1] or want in chunk:
                    return time.perf_counter() - t0, total
                tail = chunk[-len(want):]
    finally:
        writer.close()


def commandstats(redis: RedisServer) -> dict[str, int]:
    out = {}
    for line in redis.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            out[name.removeprefix("cmdstat_")] = int(rest.split(",")[0].split("=")[1])
    return out


async def storm(args: argparse.Namespace, relay: Relay, redis: RedisServer,
                replay: Relay | None) -> dict[str, object]:
    topic = "storm"
    ids = await publish(relay.url, topic, args.behind + 1, args.payload)
    stale, last = ids[0], ids[-1]
    want = f"id: {last}\n".encode()
    path = f"/v1/streams/{topic}/events"
    # the relay has primed the topic: the stale id is older than its ring
    redis.cli("CONFIG", "RESETSTAT")
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(one_client("127.0.0.1", relay.port, path, stale, want, args.timeout)
          for _ in range(args.clients)),
        return_exceptions=True,
    )
    elapsed = time.perf_counter() - t0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    ok = [r for r in results if isinstance(r, tuple)]
    failed = [r for r in results if not isinstance(r, tuple)]
    latencies = sorted(r[0] for r in ok)
    stats = commandstats(redis)
    m = await metrics(relay.url)
    rm = await metrics(replay.url) if replay else {}
    return {
        "clients": args.clients,
        "completed": len(ok),
        "failed": len(failed),
        "first_error": repr(failed[0]) if failed else "",
        "events_behind": args.behind,
        "payload_bytes": args.payload,
        "seconds_all": round(elapsed, 2),
        "p50_s": round(latencies[len(latencies) // 2], 2) if latencies else None,
        "p99_s": round(latencies[int(len(latencies) * 0.99) - 1], 2) if latencies else None,
        "bytes_received": sum(r[1] for r in ok),
        "xrange_calls": stats.get("xrange", 0),
        "xinfo_calls": stats.get("xinfo|stream", stats.get("xinfo", 0)),
        "replay_pages_served": int(rm.get("ssedge_replay_pages_total", 0)),
        "relay_replay_fetches": int(m.get("ssedge_replay_fetches_total", 0)),
        "relay_page_cache_hits": int(m.get("ssedge_replay_cache_hits_total", 0)),
        "relay_shared_fetches": int(m.get("ssedge_replay_shared_total", 0)),
        "relay_redis_history_reads": int(m.get("ssedge_redis_history_reads_total", 0)),
        "load_client_cpu_s": round((usage1.ru_utime + usage1.ru_stime)
                                   - (usage0.ru_utime + usage0.ru_stime), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--behind", type=int, default=1000, help="events after the stale id")
    parser.add_argument("--payload", type=int, default=100, help="data bytes per event")
    parser.add_argument("--ring", type=int, default=100, help="the relay's ring (events)")
    parser.add_argument("--page", type=int, default=1000, help="history page size")
    parser.add_argument("--no-replay", action="store_true", help="relay reads Redis itself")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--report", default="docs/results/reconnect-storm.md")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.clients + 100 > hard:
        print(f"open-file limit {hard} is below {args.clients} clients", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        redis = RedisServer(directory / "redis")
        replay = relay = None
        try:
            if not args.no_replay:
                replay = Relay(directory, redis, TOKEN, command="replay", replay_page=args.page)
            relay = Relay(directory, redis, TOKEN, ring_events=args.ring, replay_page=args.page,
                          replay_url=replay.url if replay else "",
                          max_connections=args.clients + 1000, topic_linger_s=600)
            conditions = (f"{args.clients} clients, {args.behind} events behind, "
                          f"{args.payload} B data, ring {args.ring}, page {args.page}, "
                          f"{'replay service' if replay else 'Redis direct'}, "
                          f"{os.cpu_count()} CPUs, {platform.python_implementation()} "
                          f"{platform.python_version()}")
            print("conditions:", conditions, flush=True)
            result = asyncio.run(storm(args, relay, redis, replay))
        finally:
            for server in (relay, replay):
                if server is not None:
                    server.stop()
            redis.stop()
    for key, value in result.items():
        print(f"  {key}: {value}")
    command = "python -m bench.reconnect_storm " + " ".join(sys.argv[1:])
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    rows = "\n".join(f"| {k} | {v} |" for k, v in result.items())
    report.write_text(
        f"# Reconnect storm\n\n"
        f"- command: `{command}`\n"
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n"
        f"- machine: {machine()}\n"
        f"- conditions: {conditions}\n\n| measure | value |\n|---|---|\n{rows}\n"
    )
    print(f"report: {report}")
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
