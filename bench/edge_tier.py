"""Benchmark: the edge's cost per stream. Streams of one topic through the edge (HAProxy in
front of the relay, as ``make up`` runs it: relay/edge/haproxy/haproxy.cfg) next to the same streams
straight to the relay, with the C load client (bench/sseload), at each number of streams and
each publish rate.

For each N and each path (``direct``, ``edge``): start a fresh Redis, one relay process
(one Granian worker) and, for ``edge``, the edge in front of it; open N streams; read the
resident memory of the edge's processes with the streams idle; then, for each rate, publish
for a few seconds and read from the client the deliveries, publish-to-receive latency and
losses (every stream must see every event), and from /proc the CPU seconds of the relay, of
HAProxy and of the client; then close the client and time until the relay has let every
stream go. Prints its conditions and writes a Markdown report.

    .venv/bin/python -m bench.edge_tier                  # what `make bench-edge` runs
    .venv/bin/python -m bench.edge_tier --smoke          # 200 streams, 2 s: check the harness

Load goes to 127.0.0.1 only; every process it starts is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.fanout import SSELOAD, LoadClient, table
from bench.peers import (
    CLOCK_TICK,
    TOKEN,
    BenchRedis,
    _wait_port,
    machine,
    rss_kib,
    tree,
    version_of,
)
from relay.harness.edge import Edge
from relay.harness.processes import free_port, spawn, stop_group
from relay.harness.servers import Relay, metrics

Row = dict[str, Any]


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of these processes. On loopback the sender's system time
    also pays the receiving socket's TCP path: the user part is a proxy's own work."""
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / CLOCK_TICK, system / CLOCK_TICK


def pin(pids: list[int], cpus: set[int]) -> None:
    """Every thread of these processes on ``cpus`` only."""
    for pid in pids:
        try:
            tasks = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for task in tasks:
            with contextlib.suppress(OSError):  # a thread that just ended
                os.sched_setaffinity(task, cpus)


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 19500; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream relays {{ least_conn; server 127.0.0.1:{relay}; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://relays;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # each event as it comes
            proxy_buffering off;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


class NginxProxy:
    """nginx 1.22 as a plain streaming reverse proxy in front of one relay: the peer the edge
    was chosen against (no active health checks, no retry on a header: not the edge)."""

    def __init__(self, directory: Path, relay: Relay) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = directory / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=directory, relay=relay.port, port=self.port))
        self.process = spawn(["nginx", "-c", str(conf), "-p", str(directory)],
                             directory / "nginx.log", None)
        _wait_port(self.port, self.process, "nginx")

    def stop(self) -> None:
        stop_group(self.process, signal.SIGTERM)  # nginx: its fast shutdown


class Setup:
    """Redis, one relay process and, for the edge path, the edge in front of it (for the
    nginx path, nginx)."""

    def __init__(self, directory: Path, path: str, streams: int, tls: bool = False) -> None:
        self.redis = BenchRedis(directory / "redis")
        self.relay: Relay | None = None
        self.edge: Edge | None = None
        self.nginx: NginxProxy | None = None
        try:
            self.relay = Relay(directory, self.redis, TOKEN,  # type: ignore[arg-type]
                               max_streams=streams + 1000, max_connections=streams + 1100,
                               topic_linger_s=0)
            if path == "edge":
                self.edge = Edge(directory / "edge", [self.relay], None, tls=tls)
            elif path == "nginx":
                self.nginx = NginxProxy(directory / "nginx", self.relay)
        except BaseException:
            self.stop()
            raise

    @property
    def port(self) -> int:
        assert self.relay is not None
        front = self.edge or self.nginx
        return front.port if front else self.relay.port

    def relay_pids(self) -> list[int]:
        assert self.relay is not None
        return tree(self.relay.pid)

    def edge_pids(self) -> list[int]:
        """HAProxy's master and worker: what carries the streams (varnishd is not on the
        streams' path and is left out)."""
        if self.nginx is not None:
            return tree(self.nginx.process.pid)
        if self.edge is None or self.edge.process is None:
            return []
        return tree(self.edge.process.pid)

    def stop(self) -> None:
        for server in (self.edge, self.nginx, self.relay):
            if server is not None:
                server.stop()
        self.redis.stop()


def publish(port: int, topic: str, rate: int, seconds: float, run: int, size: int) -> Row:
    out = subprocess.run(
        [str(SSELOAD), "pub", "redis", "127.0.0.1", str(port), "ssedge:{" + topic + "}",
         str(rate), str(seconds), str(run), str(size)],
        capture_output=True, timeout=seconds + 60, check=False)
    for line in out.stdout.decode().splitlines():
        if line.startswith("published "):
            result: Row = json.loads(line[len("published "):])
            return result
    raise RuntimeError(f"publisher failed: {out.stderr.decode()[-500:]}")


def bench(path: str, n: int, rates: list[int], args: argparse.Namespace, directory: Path,
          runs: list[int]) -> list[Row]:
    setup = Setup(directory / f"{path}-{n}", path, n)
    topic = f"edge-{path}-{n}"
    client = None
    rows: list[Row] = []
    try:
        time.sleep(1)
        edge0 = rss_kib(setup.edge_pids())
        relay0 = rss_kib(setup.relay_pids())
        client = LoadClient(setup.port, f"/v1/streams/{topic}/events", n)
        if args.pin:
            # the edge on a core of its own, everything else on the other: as near as two
            # cores come to an edge on its own machine (the direct rows run the same way,
            # the second core idle)
            pin([*setup.relay_pids(), setup.redis.process.pid, client.process.pid,
                 os.getpid()], {0})
            pin(setup.edge_pids(), {1})
        ready = client.expect("ready", 180)
        time.sleep(2)  # let the servers settle before reading their memory
        edge_idle = rss_kib(setup.edge_pids())
        relay_idle = rss_kib(setup.relay_pids())
        base: Row = {
            "path": path, "streams": n, "connected": ready["connected"],
            "connect_s": ready["connect_s"],
            "relay_kib_per_stream": round((relay_idle - relay0) / n, 1),
        }
        if setup.edge or setup.nginx:
            base["edge_kib_per_stream_idle"] = round((edge_idle - edge0) / n, 1)
        print("idle", base, flush=True)
        for rate in rates:
            runs[0] += 1
            client.send(f"start {runs[0]}")
            client.expect("started", 10)
            relay_cpu0, edge_cpu0 = cpu_split(setup.relay_pids()), cpu_split(setup.edge_pids())
            t0 = time.monotonic()
            published = publish(setup.redis.port, topic, rate, args.seconds, runs[0], args.size)
            edge_busy = rss_kib(setup.edge_pids())  # memory with events flowing
            client.send(f"end {published['last_seq']} {int(args.drain * 1000)}")
            report = client.expect("report", args.drain + 60)
            wall = time.monotonic() - t0
            relay_user, relay_sys = (b - a for a, b in zip(relay_cpu0,
                                                             cpu_split(setup.relay_pids()),
                                                             strict=True))
            edge_user, edge_sys = (b - a for a, b in zip(edge_cpu0, cpu_split(setup.edge_pids()),
                                                         strict=True))
            relay_cpu, edge_cpu = relay_user + relay_sys, edge_user + edge_sys
            deliveries = max(1, report["events"])
            span = max(report["last_s"], args.seconds)
            ok = (report["lost"] == 0 and report["dup"] == 0
                  and ready["connected"] == n and report["last_s"] <= args.seconds + 1.0)
            row = {
                **base, "rate": rate, "offered_per_s": rate * n,
                "delivered_per_s": round(report["events"] / span),
                "p50_ms": report["p50_ms"], "p99_ms": report["p99_ms"],
                "max_ms": report["max_ms"], "lost": report["lost"], "dup": report["dup"],
                "relay_cores": round(relay_cpu / span, 2),
                "relay_us_per_delivery": round(1e6 * relay_cpu / deliveries, 2),
                "relay_user_us_per_delivery": round(1e6 * relay_user / deliveries, 2),
                "client_cores": round(report["cpu_s"] / span, 2),
                "wall_s": round(wall, 1), "status": "ok" if ok else "FAILED",
            }
            if setup.edge or setup.nginx:
                row.update({
                    "edge_cores": round(edge_cpu / span, 2),
                    "edge_us_per_delivery": round(1e6 * edge_cpu / deliveries, 2),
                    "edge_user_us_per_delivery": round(1e6 * edge_user / deliveries, 2),
                    "edge_kib_per_stream_busy": round((edge_busy - edge0) / n, 1),
                })
            print("run", row, flush=True)
            rows.append(row)
            time.sleep(1)
        # how long the relay keeps a departed client's stream
        client.close()
        client = None
        assert setup.relay is not None
        t1 = time.monotonic()
        while time.monotonic() - t1 < 60:
            if asyncio.run(metrics(setup.relay.url))["ssedge_streams_open"] == 0:
                break
            time.sleep(0.2)
        released = round(time.monotonic() - t1, 1)
        for row in rows:
            row["released_after_close_s"] = released
        return rows
    finally:
        if client is not None:
            client.close()
        setup.stop()


async def _tls_streams(edge: Edge, n: int, topic: str) -> list[asyncio.StreamWriter]:
    """``n`` HTTP/1.1 streams over TLS, each read up to its ``retry:``."""
    import ssl

    context = ssl.create_default_context(cafile=str(edge.ca))
    context.set_alpn_protocols(["http/1.1"])
    writers = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.https_port,
                                                       ssl=context, server_hostname="localhost")
        writer.write(f"GET /v1/streams/{topic}/events HTTP/1.1\r\nHost: edge\r\n\r\n"
                     .encode())
        seen = b""
        while b"retry:" not in seen:
            seen += await reader.read(4096)
        writers.append(writer)
    return writers


def tls_memory(n: int, directory: Path) -> list[Row]:
    """Resident memory per idle stream in HAProxy over TLS: HTTP/1.1 (one TLS connection per
    stream) and HTTP/2 (curl, up to 100 streams on each connection), each in a fresh edge."""
    rows: list[Row] = []
    for protocol in ("HTTP/1.1 over TLS", "HTTP/2 (curl, 100 streams per connection)"):
        setup = Setup(directory / f"tls-{len(rows)}-{n}", "edge", n, tls=True)
        curls: list[subprocess.Popen[bytes]] = []
        writers: list[asyncio.StreamWriter] = []
        loop = asyncio.new_event_loop()
        try:
            edge = setup.edge
            assert edge is not None and edge.https_url is not None
            time.sleep(1)
            before = rss_kib(setup.edge_pids())
            if protocol.startswith("HTTP/1.1"):
                writers = loop.run_until_complete(_tls_streams(edge, n, "tls"))
                connections = n
            else:
                url = f"{edge.https_url}/v1/streams/tls/events"
                curls = [subprocess.Popen(
                    ["curl", "-sN", "--http2", "--cacert", str(edge.ca), "-Z", "--parallel-max",
                     "100", *([url] * min(100, n - k))],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    for k in range(0, n, 100)]
                connections = len(curls)
                deadline = time.monotonic() + 60
                while edge.streams() < n and time.monotonic() < deadline:
                    time.sleep(0.2)
            time.sleep(2)
            opened = edge.streams()
            rows.append({"protocol": protocol, "streams": opened, "connections": connections,
                         "edge_kib_per_stream": round((rss_kib(setup.edge_pids()) - before)
                                                      / max(1, opened), 1)})
            print("tls", rows[-1], flush=True)
        finally:
            for curl in curls:
                curl.kill()
                curl.wait()
            for writer in writers:
                writer.close()
            loop.close()
            setup.stop()
    return rows


def conditions(args: argparse.Namespace) -> dict[str, str]:
    return {
        "machine": f"{machine()}; load average at "
                   f"start {' '.join(f'{x:.2f}' for x in os.getloadavg())} (shared: other "
                   "sessions' tests and benchmarks may run at the same time)",
        "software": f"CPython {platform.python_version()}; {version_of(['haproxy', '-v'])}; "
                    f"{version_of(['redis-server', '--version'])}",
        "load": f"one topic, all streams subscribed; {args.size} B of data per event (about "
                f"{args.size + 30} B framed), XADD into Redis pipelined per ms (the relay's "
                f"feed reads it); each rate published for {args.seconds:g} s; losses counted "
                f"{args.drain:g} s after the last publish",
        "client": "bench/sseload (C, epoll, one thread, one HTTP/1.1 connection per stream, "
                  "reads every byte, decodes chunked bodies and `data:` lines)",
        "servers": "one relay process (Granian, 1 worker, heartbeat 15 s) and redis-server "
                   "(no persistence); edge: relay/edge/haproxy/haproxy.cfg as shipped (1 thread, "
                   "http-no-delay, leastconn, abortonclose), plain HTTP/1.1 listener. Edge CPU "
                   "and memory = HAProxy's master and worker (varnishd, behind it, carries no "
                   "stream). Memory per stream = resident memory after connecting minus "
                   "before, over N",
        "pinned": "HAProxy alone on CPU 1; relay, Redis, client, publisher on CPU 0"
                  if args.pin else "no (processes share both CPUs)",
        "file limit": f"{resource.getrlimit(resource.RLIMIT_NOFILE)[1]} descriptors per "
                      "process (a stream holds 2 in HAProxy, 1 in the relay and the client)",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1000, 9000])
    parser.add_argument("--rates", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--paths", nargs="+", default=["direct", "edge"],
                        choices=["direct", "edge", "nginx"],
                        help="nginx: nginx 1.22 as a plain streaming proxy, for comparison")
    parser.add_argument("--seconds", type=float, default=10.0, help="publishing time per rate")
    parser.add_argument("--drain", type=float, default=5.0,
                        help="seconds after the last publish until missing events are lost")
    parser.add_argument("--size", type=int, default=150, help="bytes of data per event")
    parser.add_argument("--tls-streams", type=int, default=1000,
                        help="idle streams over TLS (HTTP/1.1, then HTTP/2) for HAProxy's memory "
                             "per stream (0: none)")
    parser.add_argument("--pin", action="store_true",
                        help="the edge alone on CPU 1, relay, Redis and client on CPU 0")
    parser.add_argument("--smoke", action="store_true",
                        help="check the harness: 200 streams, rates 10 and 100, 2 s each")
    parser.add_argument("--report", default=None,
                        help="Markdown results file (docs/results/edge-tier.md; a smoke run's "
                             "goes to bench-results/)")
    args = parser.parse_args()
    if args.smoke:
        args.streams, args.seconds, args.drain = [200], 2.0, 2.0
        args.tls_streams = min(args.tls_streams, 200)
    if args.report is None:
        args.report = ("bench-results/edge-tier-smoke.md" if args.smoke
                       else "docs/results/edge-tier.md")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if not SSELOAD.exists():
        raise SystemExit(f"{SSELOAD} is missing: make bench/sseload")
    cond = conditions(args)
    for key, value in cond.items():
        print(f"{key}: {value}", flush=True)
    rows: list[Row] = []
    runs = [0]
    started = time.monotonic()
    load_seen = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.streams:
            for path in args.paths:
                try:
                    rows += bench(path, n, args.rates, args, Path(tmp), runs)
                except (RuntimeError, TimeoutError, OSError) as exc:
                    print(f"error: {path} at {n}: {exc}", flush=True)
                    rows.append({"path": path, "streams": n, "status": f"error: {exc}"})
                load_seen.append(os.getloadavg()[0])
        tls_rows: list[Row] = []
        if args.tls_streams:
            try:
                tls_rows = tls_memory(args.tls_streams, Path(tmp))
            except (RuntimeError, TimeoutError, OSError, AssertionError) as exc:
                print(f"error: TLS streams: {exc}", flush=True)
    took = time.monotonic() - started
    cond["machine"] += (f"; 1-minute load average during the run "
                        f"{min(load_seen):.2f}-{max(load_seen):.2f}")
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(
        "# The edge's cost per stream: through HAProxy and straight to the relay\n\n"
        f"- command: `python -m bench.edge_tier {' '.join(sys.argv[1:])}`\n"
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, took {took:.0f} s\n"
        + "".join(f"- {k}: {v}\n" for k, v in cond.items())
        + "\n" + table(rows) + "\n"
        + ("\n## Memory per idle stream over TLS (HAProxy)\n\n" + table(tls_rows) + "\n"
           if tls_rows else ""))
    print(f"report: {report} ({took:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
