"""What a refused request costs: one hostile source (127.0.0.2) sends requests the edge refuses
(a stream over its address's limit, a request over its rate, an odd spelling, an operator
endpoint), each on a new connection as an abuser would; from /proc, the CPU seconds HAProxy,
varnishd, the relay and the replay service spent meanwhile, and from their counters, what
reached them (nothing should). For scale, the same for a served, cached handshake (varnishd
answers it) from an exempt address.

    python -m bench.hostile --requests 20000     (make bench-hostile)

Writes docs/results/hostile.md.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.edge_tier import cpu_split
from bench.peers import machine, tree
from relay.drill.hostile import HOSTILE, request
from relay.edge.haproxy.limits import Limits
from relay.harness.edge import Edge
from relay.harness.servers import RedisServer, Relay, metrics

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results" / "hostile.md"
TOKEN = "bench-token"
# small limits so that every request after the first few is over them; 127.0.0.1 exempt
LIMITS = Limits(exempt="127.0.0.1/32").but(edge_stream_opens_per_10s=10,
                                           edge_requests_per_10s=10)

#: kind -> (the target, the source address, what it should get)
KINDS: dict[str, tuple[Callable[[int], str], str, str]] = {
    "stream over the per-address limit": (
        lambda i: f"/v1/streams/b{i % 1000}/events", HOSTILE, "200 retry (limit)"),
    "replay page over the per-address rate": (
        lambda i: f"/v1/replay/b?after={i + 1}-0", HOSTILE, "429"),
    "odd spelling of a stream": (lambda i: f"/v1/streams/b{i}/%65vents", HOSTILE, "400"),
    "operator endpoint (absolute form)": (lambda i: "http://edge/metrics", HOSTILE, "400"),
    "served: a cached handshake (exempt address)": (
        lambda i: "/v1/handshake", "127.0.0.1", "200 (varnishd hit)"),
}


async def _send(port: int, kind: str, n: int, workers: int) -> dict[int, int]:
    target, source, _ = KINDS[kind]
    statuses: dict[int, int] = {}
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            try:
                answer = await request(port, target(i), source=source, timeout=10)
                status = answer.status
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                status = 0
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return statuses


def _reached(edge: Edge, relay: Relay, replay: Relay) -> dict[str, float]:
    """What the parts behind HAProxy were asked: sessions of its relays backend, varnishd's
    client requests, the relay's streams and refusals, the replay service's pages."""
    rows = edge.admin.stat()
    relays = sum(int(r["stot"] or 0) for r in rows
                 if r["pxname"] in ("relays", "publishes") and r["svname"] == "BACKEND")
    relay_m = asyncio.run(metrics(relay.url))
    return {"relay_streams": relays,
            "varnish_requests": edge.stats().get("MAIN.client_req", 0),
            "relay_refused": relay_m.get("ssedge_refused_streams_total", 0),
            "replay_pages": asyncio.run(metrics(replay.url)).get("ssedge_replay_pages_total", 0)}


def measure(edge: Edge, relay: Relay, replay: Relay, kind: str, n: int,
            workers: int) -> dict[str, Any]:
    procs = {"haproxy": tree(edge.process.pid) if edge.process else [],
             "varnishd": tree(edge.cache.process.pid),
             "relay": tree(relay.process.pid), "replay": tree(replay.process.pid)}
    if KINDS[kind][1] == HOSTILE:  # over the limits before the count begins
        asyncio.run(_send(edge.port, kind, 30, 1))
    before = {name: cpu_split(pids) for name, pids in procs.items()}
    reached = _reached(edge, relay, replay)
    started = time.monotonic()
    statuses = asyncio.run(_send(edge.port, kind, n, workers))
    took = time.monotonic() - started
    after = {name: cpu_split(pids) for name, pids in procs.items()}
    reached_after = _reached(edge, relay, replay)
    cpu = {name: (after[name][0] - before[name][0], after[name][1] - before[name][1])
           for name in procs}
    return {"kind": kind, "n": n, "seconds": took, "statuses": statuses, "cpu": cpu,
            "reached": {k: reached_after[k] - reached[k] for k in reached}}


def report(rows: list[dict[str, Any]], workers: int) -> str:
    lines = [
        "# What a refused request costs (make bench-hostile)", "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {machine()}; HAProxy 2.6 (one thread), "
        "varnishd 7.1, one relay, one replay service, on loopback. One hostile source "
        f"(127.0.0.2, {workers} connections at a time, each request on a new connection, as "
        "an abuser sends them) against limits made small, so that all but the first few "
        "requests are over them (`bench/hostile.py`). CPU from /proc over the run (user + "
        "system; on loopback a process's system time also pays part of its peer's TCP "
        "path). \"reached\": what the parts behind HAProxy were asked meanwhile (sessions to "
        "the relays, varnishd's client requests, replay pages, the relay's own refusals).", "",
        "| request | answers | req/s | HAProxy µs CPU per request (user + sys) | "
        "varnishd CPU | relay CPU | replay CPU | reached behind HAProxy |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        hu, hs = r["cpu"]["haproxy"]
        per = (hu + hs) / r["n"] * 1e6
        answers = ", ".join(f"{s}: {c}" for s, c in sorted(r["statuses"].items()))
        reached = ", ".join(f"{k} {v:g}" for k, v in r["reached"].items() if v) or "nothing"

        def ms(name: str, row: dict[str, Any] = r) -> str:
            return f"{sum(row['cpu'][name]) * 1000:.0f} ms"

        lines.append(f"| {r['kind']} | {answers} | {r['n'] / r['seconds']:,.0f} | "
                     f"{per:.0f} ({hu / r['n'] * 1e6:.0f} + {hs / r['n'] * 1e6:.0f}) | "
                     f"{ms('varnishd')} | {ms('relay')} | {ms('replay')} | {reached} |")
    lines += ["", "The refusals are HAProxy's own answers (relay/edge/haproxy/limits.py: "
              "REFUSALS); the relays, varnishd and Redis do no work for them. The relay's "
              "CPU over each run is its heartbeats and feed while idle. The rate is the Python "
              "client's (on the same 2 cores), not the edge's ceiling: at ~30 µs a refusal, "
              "one HAProxy thread refuses on the order of 30,000 requests a second.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000, help="requests of each kind")
    parser.add_argument("--workers", type=int, default=8, help="connections at a time")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ssedge-bench-hostile-") as tmp:
        directory = Path(tmp)
        redis = RedisServer(directory / "redis", fsync="off")
        servers: list[Relay] = []
        edge: Edge | None = None
        try:
            replay = Relay(directory, redis, TOKEN, command="replay")
            servers.append(replay)
            relay = Relay(directory, redis, TOKEN, replay_url=replay.url)
            servers.append(relay)
            edge = Edge(directory / "edge", [relay], replay, limits=LIMITS, tls=False)
            asyncio.run(request(edge.port, "/v1/handshake", source="127.0.0.1"))  # warm
            rows = []
            for kind in KINDS:
                rows.append(measure(edge, relay, replay, kind, args.requests, args.workers))
                print(rows[-1], flush=True)
            text = report(rows, args.workers)
        finally:
            if edge is not None:
                edge.stop()
            for server in servers:
                server.stop()
            redis.stop()
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
