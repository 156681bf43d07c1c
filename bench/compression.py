"""Benchmark: what shared compression saves and costs. One topic of a realistic feed (price
ticks, relay/protocol/ticker.py) to N streams through the edge (HAProxy in front of one
relay, as ``make up`` runs it), three ways:

- ``plain``: nothing compressed (SSEDGE_COMPRESSION=off, the client asks for nothing);
- ``shared``: the relay compresses each topic once and every up-to-date stream gets the same
  bytes (the client asks for gzip);
- ``haproxy``: the relay sends plain bytes and HAProxy compresses each connection itself
  (its ``compression`` filter on the stream backend, the client asks for gzip).

The C load client (bench/sseload, which inflates each stream with zlib when it is compressed:
SSELOAD_ACCEPT_ENCODING) counts every event of every stream (lost, duplicated), the latency
from publish to receipt, and the bytes that came over the wire. The relay's and HAProxy's CPU
seconds come from /proc. Events are XADDed by this process: ``RUN:SEQ:TS_US:`` then a
ticker's JSON (about 400 bytes an event).

    .venv/bin/python -m bench.compression                 # what `make bench-compression` runs
    .venv/bin/python -m bench.compression --smoke         # 100 streams, 3 s: check the harness

Load goes to 127.0.0.1 only; every process it starts is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

from bench.edge_tier import cpu_split
from bench.fanout import SSELOAD, LoadClient, table
from bench.peers import TOKEN, BenchRedis, machine, rss_kib, tree, version_of
from relay.harness.edge import Edge
from relay.harness.servers import Relay, metrics
from relay.protocol.ticker import Feed
from relay.web import client

Row = dict[str, Any]
MODES = ("plain", "shared", "haproxy")

# HAProxy's own per-connection compression, on the streams' backend
HAPROXY_COMPRESSION = """    option http-no-delay
    compression algo gzip
    compression type text/event-stream
"""


class Publisher(threading.Thread):
    """XADDs ``rate`` events a second for ``seconds``, each ``RUN:SEQ:TS_US:`` + a tick."""

    def __init__(self, url: str, key: str, rate: int, seconds: float, run: int,
                 feed: Feed) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.rate, self.seconds, self.run_no = url, key, rate, seconds, run
        self.feed = feed
        self.last_seq = -1

    def run(self) -> None:
        r = redis.Redis.from_url(self.url)
        start = time.monotonic()
        total = int(self.rate * self.seconds)
        seq = 0
        while seq < total:
            due = start + seq / self.rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            # every event due by now, in one round trip
            batch = min(total, int((time.monotonic() - start) * self.rate) + 1)
            pipe = r.pipeline(transaction=False)
            for n in range(seq, max(batch, seq + 1)):
                ts = time.time_ns() // 1000
                data = f"{self.run_no}:{n}:{ts}:".encode() + self.feed.json(1 / self.rate)
                pipe.xadd(self.key, {"d": data}, maxlen=100_000, approximate=True)
            pipe.execute()
            seq = max(batch, seq + 1)
            self.last_seq = seq - 1
        r.close()


class Setup:
    def __init__(self, directory: Path, mode: str, streams: int, args: argparse.Namespace):
        self.redis = BenchRedis(directory / "redis")
        self.relay: Relay | None = None
        self.edge: Edge | None = None
        try:
            self.relay = Relay(directory, self.redis, TOKEN,  # type: ignore[arg-type]
                               max_streams=streams + 1000, max_connections=streams + 1100,
                               topic_linger_s=0,
                               compression="gzip,deflate" if mode == "shared" else "off",
                               compression_epoch_s=args.epoch_s,
                               compression_level=args.level)
            self.edge = Edge(directory / "edge", [self.relay], None, tls=False)
            if mode == "haproxy":
                config = self.edge.config
                text = config.read_text()
                assert text.count("    option http-no-delay\n") == 1
                config.write_text(text.replace("    option http-no-delay\n", HAPROXY_COMPRESSION))
                assert self.edge.process is not None
                os.kill(self.edge.process.pid, signal.SIGUSR2)  # reload: a new worker
                self._until_compressed(self.edge.url)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _until_compressed(url: str) -> None:
        """Wait until the reloaded HAProxy answers a stream gzip-compressed."""
        async def encoding() -> str | None:
            es = await client.stream(f"{url}/v1/streams/probe/events", compressed=True)
            es.close()
            return es.response.headers.get("content-encoding")

        deadline = time.monotonic() + 20
        while asyncio.run(encoding()) != "gzip":
            if time.monotonic() > deadline:
                raise RuntimeError("HAProxy does not compress after its reload")
            time.sleep(0.5)
        time.sleep(1)  # the old worker's probes gone

    def relay_pids(self) -> list[int]:
        assert self.relay is not None
        return tree(self.relay.pid)

    def edge_pids(self) -> list[int]:
        assert self.edge is not None and self.edge.process is not None
        return tree(self.edge.process.pid)

    def stop(self) -> None:
        for server in (self.edge, self.relay):
            if server is not None:
                server.stop()
        self.redis.stop()


def bench(mode: str, n: int, rate: int, args: argparse.Namespace, directory: Path) -> Row:
    setup = Setup(directory / f"{mode}-{n}-{rate}", mode, n, args)
    topic = f"ticks-{mode}"
    key = "ssedge:{" + topic + "}"
    client = None
    feed = Feed(seed=7)
    try:
        assert setup.edge is not None
        time.sleep(1)
        rss0 = rss_kib(setup.relay_pids()), rss_kib(setup.edge_pids())
        if mode != "plain":
            os.environ["SSELOAD_ACCEPT_ENCODING"] = "gzip"
        if args.rx_at_wake:
            os.environ["SSELOAD_RX_AT_WAKE"] = "1"
        if args.defer:  # an arena for the counted run: ~460 B a delivery plain, ~110 shared
            framed = 460 if mode == "plain" else 300 if mode == "haproxy" else 120
            nbytes = n * rate * (args.seconds + 2) * framed * 1.25
            os.environ["SSELOAD_DEFER"] = str(max(64, min(6144, int(nbytes) >> 20)))
        try:
            assert setup.relay is not None
            port = setup.relay.port if args.direct else setup.edge.port
            client = LoadClient(port, f"/v1/streams/{topic}/events", n)
        finally:
            os.environ.pop("SSELOAD_ACCEPT_ENCODING", None)
            os.environ.pop("SSELOAD_RX_AT_WAKE", None)
            os.environ.pop("SSELOAD_DEFER", None)
        ready = client.expect("ready", 180)
        time.sleep(1)
        rss1 = rss_kib(setup.relay_pids()), rss_kib(setup.edge_pids())
        # a warm-up run (its events are not counted): every stream reaches its topic's shared
        # bytes at the first epoch, the feed and the pools warm up
        client.send("start 1")
        client.expect("started", 10)
        warm = Publisher(setup.redis.url, key, rate, args.warmup, 1, feed)
        warm.start()
        warm.join()
        time.sleep(1)
        client.send("start 2")
        client.expect("started", 10)
        relay0, edge0 = cpu_split(setup.relay_pids()), cpu_split(setup.edge_pids())
        publisher = Publisher(setup.redis.url, key, rate, args.seconds, 2, feed)
        publisher.start()
        publisher.join()
        client.send(f"end {publisher.last_seq} {int(args.drain * 1000)}")
        report = client.expect("report", args.drain + 60)
        rss2 = rss_kib(setup.relay_pids()), rss_kib(setup.edge_pids())
        idle = [(rss1[i] - rss0[i]) / n for i in (0, 1)]
        busy = [(rss2[i] - rss0[i]) / n for i in (0, 1)]
        relay_cpu = sum(cpu_split(setup.relay_pids())) - sum(relay0)
        edge_cpu = sum(cpu_split(setup.edge_pids())) - sum(edge0)
        assert setup.relay is not None
        numbers = asyncio.run(metrics(setup.relay.url))
        deliveries = max(1, report["events"])
        span = max(report["last_s"], args.seconds)
        ok = (report["lost"] == 0 and report["dup"] == 0 and report["inflate_errors"] == 0
              and ready["connected"] == n)
        row: Row = {
            "mode": mode, "streams": n, "rate": rate, "deliveries": report["events"],
            "wire_bytes_per_delivery": round(report["bytes"] / deliveries, 1),
            "relay_us_per_delivery": round(1e6 * relay_cpu / deliveries, 2),
            "edge_us_per_delivery": round(1e6 * edge_cpu / deliveries, 2),
            "relay_cores": round(relay_cpu / span, 2), "edge_cores": round(edge_cpu / span, 2),
            "client_cores": round(report["window_cpu_s"] / span, 2),
            "arena_full": report["arena_full"],
            "p50_ms": report["p50_ms"], "p99_ms": report["p99_ms"], "max_ms": report["max_ms"],
            # resident memory per stream, relay / HAProxy: the streams open and idle, then
            # after the counted run (the pools' high-water mark), less before any opened
            "relay_kib_per_stream": f"{idle[0]:.1f} / {busy[0]:.1f}",
            "edge_kib_per_stream": f"{idle[1]:.1f} / {busy[1]:.1f}",
            "lost": report["lost"], "dup": report["dup"],
            "compressed_streams": report["compressed_streams"],
            "inflate_errors": report["inflate_errors"],
            "compressor_ratio": round(numbers.get("ssedge_compression_ratio", 0), 2),
            "epochs": numbers.get("ssedge_compression_epochs", 0),
            "shared_sends": numbers.get("ssedge_shared_sends_total", 0),
            "status": "ok" if ok else "FAILED",
        }
        print("run", row, flush=True)
        return row
    finally:
        if client is not None:
            client.close()
        setup.stop()


def ratios(rows: list[Row]) -> list[Row]:
    """Each compressed row against the plain one of the same streams and rate."""
    out = []
    for row in rows:
        base = next((r for r in rows if r["mode"] == "plain" and r["streams"] == row["streams"]
                     and r["rate"] == row["rate"]), None)
        if base is None or row["mode"] == "plain":
            continue
        cpu = row["relay_us_per_delivery"] + row["edge_us_per_delivery"]
        base_cpu = base["relay_us_per_delivery"] + base["edge_us_per_delivery"]
        out.append({
            "mode": row["mode"], "streams": row["streams"], "rate": row["rate"],
            "fewer_bytes_x": round(base["wire_bytes_per_delivery"]
                                   / max(1e-9, row["wire_bytes_per_delivery"]), 2),
            "cpu_per_delivery_vs_plain": round(cpu / max(1e-9, base_cpu), 2),
            "p99_vs_plain": round(row["p99_ms"] / max(1e-9, base["p99_ms"]), 2),
        })
    return out


def write_report(rows: list[Row], args: argparse.Namespace, out: Path) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Shared compression: bytes, CPU and latency per delivery",
        "",
        f"Measured {now} by `make bench-compression` (bench/compression.py) on {machine()};",
        f"{version_of(['haproxy', '-v'])}; {version_of(['redis-server', '--version'])}.",
        "",
        "One topic of price ticks (relay/protocol/ticker.py: Coinbase's public ticker message,",
        "about 400 bytes of JSON an event), N streams through the edge (HAProxy in front of one",
        "relay process), for each mode a fresh stack: `plain` (nothing compressed), `shared` (the",
        "relay compresses each topic once, SSEDGE_COMPRESSION), `haproxy` (HAProxy's own",
        "`compression` filter, per connection). The C client inflates each compressed stream",
        f"(zlib) and checks every event. {args.warmup:g} s warm-up, then {args.seconds:g} s",
        f"counted; zlib level {args.level}, epochs {args.epoch_s:g} s. Bytes are what came over",
        "the wire per delivery (HTTP/1.1 chunked framing included); CPU is the relay's and",
        "HAProxy's (user + system, loopback: the sender's system time also pays the receiver's",
        "TCP path); one run each, on 2 cores shared with the client and Redis"
        + " (and with other work on this machine).",
        "Memory per stream is resident memory (relay; HAProxy) with the N streams open and"
        " idle, then after the counted run, less before any opened, over N.",
        "Latency is publish to receipt"
        + (", the receipt timed when the client's epoll_wait returned the stream's readiness"
           " (SSELOAD_RX_AT_WAKE: not after this one thread inflated the streams before it;"
           " a browser inflates its one stream)." if args.rx_at_wake else
           ", the receipt timed at the client's read.")
        + (" The client kept each read's bytes with its time and decoded them after the window"
           " (SSELOAD_DEFER): while the servers were measured it only read, and its inflating"
           " of thousands of streams delayed no read (`client_cores` is its CPU in the window)."
           if args.defer else ""),
        "",
        table(rows),
        "",
        "Against `plain` at the same streams and rate (goals: at least 4x fewer bytes, CPU per",
        "delivery at most plain's, p99 within 1.2x):",
        "",
        table(ratios(rows)),
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1000])
    parser.add_argument("--rates", type=int, nargs="+", default=[10])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--drain", type=float, default=10.0)
    parser.add_argument("--level", type=int, default=6)
    parser.add_argument("--epoch-s", type=float, default=5.0)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rx-at-wake", action="store_true",
                        help="time receipts at the client's wake-up (SSELOAD_RX_AT_WAKE)")
    parser.add_argument("--defer", action="store_true",
                        help="the client decodes after the counted window (SSELOAD_DEFER): its"
                        " inflating takes no core from the servers while they are measured")
    parser.add_argument("--direct", action="store_true",
                        help="streams straight to the relay (HAProxy idle): the relay alone")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "docs" / "results"
                        / "compression.md")
    args = parser.parse_args()
    if args.smoke:
        args.streams, args.seconds, args.warmup = [100], 3.0, 3.0
    assert SSELOAD.exists(), "make bench/sseload first"
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ssedge-bench-compression-") as tmp:
        for n in args.streams:
            for rate in args.rates:
                for mode in args.modes:
                    rows.append(bench(mode, n, rate, args, Path(tmp)))
    if not args.smoke:
        write_report(rows, args, args.out)
    else:
        print(table(rows))
        print(table(ratios(rows)))


if __name__ == "__main__":
    main()
