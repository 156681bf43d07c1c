"""Benchmark: a hundred thousand streams on one machine, straight to one relay.

One relay (``--workers`` Granian worker processes, each taking at most ``--per-worker``
connections, below the 20,000 descriptors a process may hold here; a full worker stops
accepting and the others take the rest) and its Redis; ``--clients`` C load
clients (bench/sseload), each opening its share of ``--streams`` streams on one topic from
``--sources`` loopback source addresses (SSELOAD_SOURCES: one source address has one
ephemeral port range, about 28,000 ports, towards one address and port). Then:

1. every stream connected and held: counted by the clients and by the relay (/metrics);
   connect rate; resident memory of the relay (main process and workers) before and with
   the streams open, per stream; Redis's memory before and after;
2. the streams at rest for ``--rest-s``: CPU of the relay (heartbeats), of Redis, of the
   clients, of the whole machine (cores used), load average;
3. one event to every stream: publish-to-receive p50/p99/max, lost;
4. ``--rate`` events/s to every stream for ``--seconds``: p50/p99/max, lost.

The clients' latency histograms are merged (SSELOAD_HIST), so p99 is over every delivery.

    .venv/bin/python -m bench.hundredk                 # what `make bench-100k` runs
    .venv/bin/python -m bench.hundredk --smoke         # 2,000 streams, a few seconds

Load goes to 127.0.0.0/8 only; every process it starts is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import redis

from bench.edge_tier import cpu_split
from bench.fanout import SSELOAD, LoadClient, table
from bench.peers import TOKEN, BenchRedis, cpu_seconds, machine, rss_kib, tree, version_of
from relay import prometheus
from relay.harness.servers import Relay
from relay.web import client

Row = dict[str, Any]
KEY_OF = "ssedge:{%s}"
# each client keeps at most this many connections in flight: all of them together stay
# below net.core.somaxconn (4096 here), the relay's accept queue whatever its backlog setting
IN_FLIGHT = 3600
# Granian's allocator (jemalloc, its symbols prefixed _rjem_, so configured by
# _RJEM_MALLOC_CONF) keeps freed pages for 10 s by default and purges them only when it
# allocates again: an idle relay keeps what its connect burst freed. Returned at once, 10,000
# idle streams cost 19.3 KiB each instead of 23.0 (1 worker; docs/PERFORMANCE.md)
JEMALLOC = "dirty_decay_ms:0,muzzy_decay_ms:0"


@dataclass
class Args:
    streams: int = 100_000
    # the workers take connections from one accept queue, and not evenly: 100,000 streams on
    # 7 workers came to 9,923-17,909 a worker, on 8 to 8,409-18,000 (and 100 refused by the
    # full one while max_streams was the cap). So the cap is max_connections (Granian stops
    # accepting: the others take them) with max_streams just above it; 8 x 18,000 in all.
    workers: int = 8
    per_worker: int = 18_000
    clients: int = 6
    sources: int = 8
    rest_s: float = 30.0
    seconds: float = 60.0
    rate: int = 1
    size: int = 150
    drain_s: float = 10.0
    heartbeat_s: float = 15.0
    jemalloc: str = JEMALLOC
    report: str = "docs/results/hundredk.md"
    command: str = "python -m bench.hundredk"
    settings: dict[str, str] = field(default_factory=dict)
    # the clients only read while events are measured and decode after (SSELOAD_DEFER): off
    # by default here, where it changed nothing (their CPU is the reads: PERFORMANCE.md)
    defer: bool = False


def parse(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = Args()
    parser.add_argument("--streams", type=int, default=d.streams)
    parser.add_argument("--workers", type=int, default=d.workers,
                        help="Granian worker processes of the relay")
    parser.add_argument("--per-worker", type=int, default=d.per_worker,
                        help="SSEDGE_MAX_CONNECTIONS of each worker (SSEDGE_MAX_STREAMS is "
                             "100 more: a full worker stops accepting rather than refusing)")
    parser.add_argument("--clients", type=int, default=d.clients,
                        help="sseload processes (each holds streams/clients)")
    parser.add_argument("--sources", type=int, default=d.sources,
                        help="loopback source addresses 127.0.1.1-K (SSELOAD_SOURCES)")
    parser.add_argument("--rest-s", type=float, default=d.rest_s,
                        help="seconds the streams are held at rest and the CPU measured")
    parser.add_argument("--seconds", type=float, default=d.seconds,
                        help="seconds of --rate events/s to every stream")
    parser.add_argument("--rate", type=int, default=d.rate)
    parser.add_argument("--size", type=int, default=d.size, help="bytes of data per event")
    parser.add_argument("--drain-s", type=float, default=d.drain_s,
                        help="seconds after the last publish until a missing event is lost")
    parser.add_argument("--heartbeat-s", type=float, default=d.heartbeat_s,
                        help="SSEDGE_HEARTBEAT_S of the relay")
    parser.add_argument("--jemalloc", default=d.jemalloc, metavar="CONF",
                        help="_RJEM_MALLOC_CONF of the relay (Granian's allocator); '' for "
                             "jemalloc's defaults")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="another relay setting (SSEDGE_NAME), e.g. --set ring_events=1000")
    parser.add_argument("--report", default=None,
                        help="Markdown results (docs/results/hundredk.md; a smoke run's goes "
                             "to bench-results/)")
    parser.add_argument("--defer", action="store_true",
                        help="the clients decode after each measured run (SSELOAD_DEFER)")
    parser.add_argument("--smoke", action="store_true",
                        help="2,000 streams, 2 workers, 2 clients, 2 sources, a few seconds")
    ns = parser.parse_args(argv)
    if ns.smoke:
        ns.streams, ns.workers, ns.per_worker, ns.clients, ns.sources = 2000, 2, 1500, 2, 2
        ns.rest_s, ns.seconds, ns.rate, ns.drain_s = 2.0, 3.0, 2, 3.0
    report = ns.report or ("bench-results/hundredk-smoke.md" if ns.smoke
                           else "docs/results/hundredk.md")
    settings = dict(s.split("=", 1) for s in ns.set)
    return Args(ns.streams, ns.workers, ns.per_worker, ns.clients, ns.sources, ns.rest_s,
                ns.seconds, ns.rate, ns.size, ns.drain_s, ns.heartbeat_s, ns.jemalloc, report,
                "python -m bench.hundredk " + " ".join(argv if argv is not None
                                                       else sys.argv[1:]), settings,
                ns.defer)


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of every CPU since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def kernel_tcp_pages() -> int:
    """Pages the kernel's TCP stack holds (buffers of every socket: both ends, on loopback)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1])
    return 0


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def merged(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The clients' reports as one: sums, and quantiles over the merged histogram."""
    hist: Counter[int] = Counter()
    for r in reports:
        for upper_us, count in r.get("hist", []):
            hist[upper_us] += count
    total = sum(hist.values())

    def quantile(q: float) -> float | None:
        if not total:
            return None
        want = min(total - 1, int(q * total))
        seen = 0
        for upper_us in sorted(hist):
            seen += hist[upper_us]
            if seen > want:
                return round(upper_us / 1000, 1)
        return None

    keys = ("events", "expected", "lost", "dup", "complete_streams", "live", "closed")
    out: dict[str, Any] = {k: sum(r[k] for r in reports) for k in keys}
    out.update(p50_ms=quantile(0.5), p99_ms=quantile(0.99), p999_ms=quantile(0.999),
               max_ms=quantile(1.0), last_s=max(r["last_s"] for r in reports),
               client_cpu_s=round(sum(r["cpu_s"] for r in reports), 1))
    return out


class Bench:
    def __init__(self, args: Args, directory: Path) -> None:
        self.args = args
        self.redis = BenchRedis(directory / "redis")
        self.r = redis.Redis.from_url(self.redis.url)
        self.topic = "hundredk"
        self.relay: Relay | None = None
        self.clients: list[LoadClient] = []
        self.run = 0
        settings: dict[str, Any] = {
            # a full worker stops accepting (Granian's backpressure) and the others take the
            # connections from the shared queue, instead of refusing streams at max_streams
            "workers": args.workers, "max_connections": args.per_worker,
            "max_streams": args.per_worker + 100,
            "heartbeat_s": args.heartbeat_s, "topic_linger_s": 0, **args.settings}
        # the relay's environment is this process's (relay.harness.servers), read when its
        # main process starts; its workers are forked from it
        old = os.environ.pop("_RJEM_MALLOC_CONF", None)
        if args.jemalloc:
            os.environ["_RJEM_MALLOC_CONF"] = args.jemalloc
        try:
            self.relay = Relay(directory, self.redis, TOKEN, **settings)  # type: ignore[arg-type]
        except BaseException:
            self.stop()
            raise
        finally:
            os.environ.pop("_RJEM_MALLOC_CONF", None)
            if old is not None:
                os.environ["_RJEM_MALLOC_CONF"] = old
        self.settings = settings

    def relay_pids(self) -> list[int]:
        assert self.relay is not None
        return tree(self.relay.pid)

    def client_pids(self) -> list[int]:
        return [c.process.pid for c in self.clients]

    def redis_memory(self) -> int:
        return int(self.r.info("memory")["used_memory"])

    def tally(self) -> Row:
        """The relay's own count (one /metrics answer holds every worker's): streams open in
        all and on the fullest and emptiest worker, streams refused (by reason) and closed for
        falling behind since it started."""
        assert self.relay is not None
        response = asyncio.run(client.request("GET", self.relay.url + "/metrics", timeout=30))
        samples = prometheus.parse(response.body.decode())
        per_worker = [s.value for s in samples if s.name == "ssedge_streams_open"]
        refused: Counter[str] = Counter()
        for s in samples:
            if s.name == "ssedge_refused_streams_total":
                refused[s.labels.get("reason", "?")] += int(s.value)
        return {"held_by_relay": int(sum(per_worker)),
                "per_worker": f"{int(min(per_worker, default=0))}-"
                              f"{int(max(per_worker, default=0))}",
                "refused": ", ".join(f"{k} {v}" for k, v in sorted(refused.items()) if v)
                           or "0",
                "backlog_drops": int(sum(s.value for s in samples
                                         if s.name == "ssedge_backlog_drops_total"))}

    def connect(self) -> Row:
        a = self.args
        # the topic is written once first: the streams join a hot topic, as on a live feed
        self.r.xadd(KEY_OF % self.topic, {"d": b"0:0:0:warm-up"})
        time.sleep(2)
        rss0 = rss_kib(self.relay_pids())
        redis0 = self.redis_memory()
        tcp0 = kernel_tcp_pages()
        shares = [a.streams // a.clients + (i < a.streams % a.clients) for i in range(a.clients)]
        in_flight = max(10, IN_FLIGHT // a.clients)
        env = {"SSELOAD_SOURCES": str(a.sources), "SSELOAD_HIST": "1",
               "SSELOAD_RX_AT_WAKE": "1"}
        if a.defer:  # an arena for each client's share of the longest run, with a quarter spare
            nbytes = a.streams / a.clients * (a.rate * a.seconds + 2) * (a.size + 60) * 1.25
            env["SSELOAD_DEFER"] = str(max(64, int(nbytes) >> 20))
        t0 = time.monotonic()
        for n in shares:
            assert self.relay is not None
            self.clients.append(LoadClient(self.relay.port, f"/v1/streams/{self.topic}/events",
                                           n, max_connecting=in_flight, env=env))
        readies = [c.expect("ready", 600) for c in self.clients]
        took = time.monotonic() - t0
        connected = sum(r["connected"] for r in readies)
        time.sleep(5)  # let the workers settle before reading their memory
        rss1 = rss_kib(self.relay_pids())
        redis1 = self.redis_memory()
        tcp1 = kernel_tcp_pages()
        tally = self.tally()
        return {"streams": a.streams, "connected": connected, **tally,
                "connect_s": round(took, 1), "connect_per_s": round(connected / took),
                "retried": sum(r["retried"] for r in readies),
                "bad_status": sum(r["bad_status"] for r in readies),
                "relay_rss_before_mib": round(rss0 / 1024, 1),
                "relay_rss_mib": round(rss1 / 1024, 1),
                "kib_per_stream_relay": round((rss1 - rss0) / max(1, connected), 2),
                "redis_used_before_mib": round(redis0 / 2**20, 2),
                "redis_used_mib": round(redis1 / 2**20, 2),
                "bytes_per_stream_redis": round((redis1 - redis0) / max(1, connected), 3),
                # not in any process's RSS: socket buffers, both ends of each stream
                "kernel_tcp_mib": round(tcp1 * os.sysconf("SC_PAGE_SIZE") / 2**20, 1),
                "kernel_tcp_kib_per_stream": round((tcp1 - tcp0) * os.sysconf("SC_PAGE_SIZE")
                                                   / 1024 / max(1, connected), 2)}

    def at_rest(self) -> Row:
        relay0 = cpu_seconds(self.relay_pids())
        redis0 = cpu_seconds([self.redis.process.pid])
        clients0 = cpu_seconds(self.client_pids())
        busy0, total0 = machine_busy()
        load0 = loadavg()
        t0 = time.monotonic()
        time.sleep(self.args.rest_s)
        wall = time.monotonic() - t0
        busy1, total1 = machine_busy()
        relay = cpu_seconds(self.relay_pids()) - relay0
        cores = os.cpu_count() or 1
        return {"seconds": round(wall, 1), "relay_cpu_pct": round(100 * relay / wall, 1),
                "redis_cpu_pct": round(100 * (cpu_seconds([self.redis.process.pid]) - redis0)
                                       / wall, 1),
                "clients_cpu_pct": round(100 * (cpu_seconds(self.client_pids()) - clients0)
                                         / wall, 1),
                "machine_cores_used": round(cores * (busy1 - busy0) / max(1, total1 - total0),
                                            2),
                "of_cores": cores, "load_before": load0, "load_after": loadavg(),
                **self.tally()}

    def deliver(self, rate: int, seconds: float) -> Row:
        """``rate`` events/s for ``seconds`` (at least one event) to every stream."""
        a = self.args
        self.run += 1
        for c in self.clients:
            c.send(f"start {self.run}")
        for c in self.clients:
            c.expect("started", 30)
        relay0 = cpu_split(self.relay_pids())
        clients0 = cpu_seconds(self.client_pids())
        busy0, total0 = machine_busy()
        t0 = time.monotonic()
        out = subprocess.run(
            [str(SSELOAD), "pub", "redis", "127.0.0.1", str(self.redis.port),
             KEY_OF % self.topic, str(rate), str(seconds), str(self.run), str(a.size)],
            capture_output=True, timeout=seconds + 60, check=True, text=True)
        published = next(json_of(line, "published ") for line in out.stdout.splitlines()
                         if line.startswith("published "))
        last = published["last_seq"]
        for c in self.clients:
            c.send(f"end {last} {int(a.drain_s * 1000)}")
        reports = [c.expect("report", a.drain_s + 60) for c in self.clients]
        wall = time.monotonic() - t0
        busy1, total1 = machine_busy()
        relay1 = cpu_split(self.relay_pids())
        relay_user, relay_sys = relay1[0] - relay0[0], relay1[1] - relay0[1]
        m = merged(reports)
        deliveries = max(1, m["events"])
        return {"rate": rate, "seconds": seconds, "published": last + 1,
                "streams": m["live"], "deliveries": m["events"], "expected": m["expected"],
                "lost": m["lost"], "dup": m["dup"], "p50_ms": m["p50_ms"], "p99_ms": m["p99_ms"],
                "p999_ms": m["p999_ms"], "max_ms": m["max_ms"],
                "wall_s": round(wall, 1),
                "relay_cpu_s": round(relay_user + relay_sys, 2),
                "relay_user_s": round(relay_user, 2), "relay_sys_s": round(relay_sys, 2),
                "relay_us_per_delivery": round(1e6 * (relay_user + relay_sys) / deliveries, 1),
                "clients_cpu_s": round(cpu_seconds(self.client_pids()) - clients0, 2),
                "machine_cores_used": round((os.cpu_count() or 1) * (busy1 - busy0)
                                            / max(1, total1 - total0), 2),
                "closed": m["closed"], **self.tally()}

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        if self.relay is not None:
            self.relay.stop()
        self.r.close()
        self.redis.stop()


def json_of(line: str, prefix: str) -> dict[str, Any]:
    import json

    value: dict[str, Any] = json.loads(line[len(prefix):])
    return value


def conditions(args: Args) -> dict[str, str]:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    ports = " - ".join(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    somaxconn = Path("/proc/sys/net/core/somaxconn").read_text().strip()
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return {
        "machine": f"{machine()}, {memory:.0f} GiB, RLIMIT_NOFILE {nofile}, somaxconn "
                   f"{somaxconn}, ephemeral ports {ports}",
        "software": f"CPython {platform.python_version()}, granian {metadata.version('granian')}, "
                    f"uvloop {metadata.version('uvloop')}, redis-py {metadata.version('redis')}; "
                    f"{version_of(['redis-server', '--version'])}",
        "relay": f"one node, {args.workers} Granian workers, each max_connections "
                 f"{args.per_worker} and max_streams {args.per_worker + 100}; heartbeat "
                 f"{args.heartbeat_s:g} s; "
                 "topic written once before the streams open; Granian's jemalloc: "
                 f"{args.jemalloc or 'its defaults'}"
                 + "".join(f"; {k}={v}" for k, v in args.settings.items()),
        "clients": f"{args.clients} bench/sseload processes (C, epoll, one thread each), "
                   f"{args.streams // args.clients} streams each, from {args.sources} source "
                   f"addresses (127.0.1.1-{args.sources}), at most {IN_FLIGHT} connecting at "
                   "once in all; latency timed when epoll woke the client (SSELOAD_RX_AT_WAKE)"
                   + ("; while events are measured the clients only read, and decode after "
                      "(SSELOAD_DEFER)" if args.defer else ""),
        "events": f"{args.size} B of data, XADDed to Redis by `sseload pub`; one event, then "
                  f"{args.rate}/s for {args.seconds:g} s; lost = missing {args.drain_s:g} s "
                  "after the last publish",
    }


def write_report(args: Args, cond: dict[str, str], rows: dict[str, list[Row]],
                 started: float, load_start: str) -> Path:
    path = Path(args.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = ("# A hundred thousand streams on one machine\n\n"
            f"- command: `{args.command.strip()}` (`make bench-100k`)\n"
            f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, took "
            f"{time.monotonic() - started:.0f} s\n"
            + "".join(f"- {k}: {v}\n" for k, v in cond.items())
            + f"- load average at start: {load_start}; at the end: {loadavg()}\n")
    for title, part in rows.items():
        text += f"\n## {title}\n\n{table(part)}\n"
    path.write_text(text)
    return path


def run(args: Args) -> tuple[dict[str, list[Row]], Path]:
    """The whole benchmark: its tables by title, and the report written."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if not SSELOAD.exists():
        raise SystemExit(f"{SSELOAD} is missing: make bench/sseload")
    per_client = math.ceil(args.streams / args.clients)
    if per_client > hard - 1000:
        raise SystemExit(f"{per_client} streams per client: more than {hard} descriptors allow")
    if args.workers * args.per_worker < args.streams:
        raise SystemExit("workers x per-worker is below streams: some would be refused")
    cond = conditions(args)
    for key, value in cond.items():
        print(f"{key}: {value}", flush=True)
    load_start = loadavg()
    started = time.monotonic()
    rows: dict[str, list[Row]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(args, Path(tmp))
        try:
            connect = bench.connect()
            print("connected", connect, flush=True)
            rows["Connect and hold: memory"] = [connect]
            rest = bench.at_rest()
            print("at rest", rest, flush=True)
            rows[f"At rest for {args.rest_s:g} s: CPU (heartbeats)"] = [rest]
            one = bench.deliver(1, 1)
            print("one event", one, flush=True)
            steady = bench.deliver(args.rate, args.seconds)
            print("steady", steady, flush=True)
            rows["One event, then a steady rate, to every stream"] = [one, steady]
        finally:
            bench.stop()
    path = write_report(args, cond, rows, started, load_start)
    print(f"report: {path}", flush=True)
    return rows, path


def main(argv: list[str] | None = None) -> int:
    run(parse(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
