"""Benchmark: fan-out of one topic to N clients, ssedge side by side with its peers.

For each number of connections, for each server in turn (ssedge direct with 1 and 2 Granian
workers, ssedge through Varnish, nginx+Nchan, sse-starlette): start it on loopback, open N
streams with the C load client (``bench/sseload``), read the server's resident memory with
the streams idle, then publish at each rate for a few seconds and read, from the client,
delivered events/s, publish-to-receive latency and losses (every stream must see every
sequence number), and from /proc, the CPU seconds of every server process. A server that
loses events or falls behind at a rate is not run at higher rates. Prints its conditions and
writes a Markdown report.

    .venv/bin/python -m bench.fanout                 # what `make bench` runs
    .venv/bin/python -m bench.fanout --smoke         # 10 s, 200 connections, to check the harness

``ssedge-multi`` is one relay worker whose 1,000 clients each follow 8 of 64 topics on one
stream (``/v1/streams/events?topic=…``, composite ids); the publisher spreads its events round
robin over the 64 topics at 8 times the rate, so each client receives ``rate`` events/s, as a
one-topic client does: its row compares with ``ssedge 1w`` at the same ``rate``.

Load goes to 127.0.0.1 only; every process it starts is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import resource
import select
import subprocess
import sys
import tempfile
import time
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.peers import (
    Nchan,
    Server,
    Ssedge,
    Starlette,
    cpu_seconds,
    machine,
    rss_kib,
    version_of,
)
from relay.harness.servers import metrics

SSELOAD = Path(__file__).with_name("sseload")
SERVERS = ("ssedge-1w", "ssedge-2w", "ssedge-varnish", "ssedge-multi", "nchan-1w", "nchan-2w",
           "starlette")
MULTI = (64, 8)  # ssedge-multi: topics in all, topics per stream
MULTI_MAX_CONNS = 1000  # the row the issue asks for; not run at larger N
VARNISH_MAX_STREAMS = 4900  # the shipped varnish/params (and RLIMIT_NOFILE) hold about this many


class LoadClient:
    """``sseload sub``: N streams, driven line by line over stdin/stdout."""

    def __init__(self, port: int, path: str, n: int,
                 multi: tuple[int, int, str] | None = None, *, max_connecting: int = 1000,
                 env: dict[str, str] | None = None, defer_mib: int = 0) -> None:
        # ``multi``: (topics, per stream, topic prefix): streams on several topics; ``env``:
        # SSELOAD_* variables (bench/sseload.c's head comment) added to this one's environment;
        # ``defer_mib``: read into an arena of that size and decode after each counted window
        # (SSELOAD_DEFER), reading only inside it
        extra = [str(max_connecting), *map(str, multi)] if multi else [str(max_connecting)]
        env = {**(env or {}), **({"SSELOAD_DEFER": str(defer_mib)} if defer_mib else {})}
        self.process = subprocess.Popen(
            [str(SSELOAD), "sub", "127.0.0.1", str(port), path, str(n), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
            env={**os.environ, **env} if env else None)
        self.buffer = b""

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")

    def expect(self, prefix: str, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                text = line.decode()
                if text.startswith(prefix):
                    rest = text[len(prefix):].strip()
                    return json.loads(rest) if rest else {}
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"load client: no {prefix!r} in {timeout} s")
            ready, _, _ = select.select([self.process.stdout], [], [], left)
            if ready:
                chunk = os.read(self.process.stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(f"load client exited ({self.process.poll()})")
                self.buffer += chunk

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.send("quit")
                self.process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


def publish(server: Server, topic: str, rate: int, seconds: float, run: int,
            size: int) -> dict[str, Any]:
    """``rate`` events/s reach each client: on several topics, ``topics / per`` times as
    many are published, spread over every topic."""
    multi = getattr(server, "multi", None)
    extra = [str(multi[0])] if multi else []
    total = rate * multi[0] // multi[1] if multi else rate
    out = subprocess.run(
        [str(SSELOAD), "pub", server.pub_mode, "127.0.0.1", str(server.publish_port),
         server.pub_target(topic), str(total), str(seconds), str(run), str(size), *extra],
        capture_output=True, timeout=seconds + 60, check=False)
    for line in out.stdout.decode().splitlines():
        if line.startswith("published "):
            result: dict[str, Any] = json.loads(line[len("published "):])
            return result
    raise RuntimeError(f"publisher failed: {out.stderr.decode()[-500:]}")


def start(name: str, directory: Path) -> Server:
    if name.startswith("ssedge"):
        workers = 2 if name == "ssedge-2w" else 1
        return Ssedge(directory, workers=workers, edge=name == "ssedge-varnish",
                      multi=MULTI if name == "ssedge-multi" else None)
    if name.startswith("nchan"):
        return Nchan(directory, workers=int(name[-2]))
    return Starlette(directory)


def ssedge_writes(server: Server) -> tuple[float, float] | None:
    """(events out, sends) of a one-worker relay; a second worker's /metrics is not reachable."""
    if not isinstance(server, Ssedge) or "2w" in server.name:
        return None
    m = asyncio.run(metrics(server.relay.url))
    return m.get("ssedge_events_out_total", 0.0), m.get("ssedge_sends_total", 0.0)


def profile(server: Ssedge, client: LoadClient, topic: str, rate: int, args: argparse.Namespace,
            run: int, out: Path) -> str:
    """py-spy on the relay worker during one more run at ``rate``: where its CPU goes."""
    worker = server.worker_pids()[0]
    raw = out.with_suffix(".raw")
    spy = subprocess.Popen(
        [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(worker),
         "--duration", str(int(args.seconds)), "--rate", "200", "--format", "raw",
         "--nolineno", "--nonblocking", "--output", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client.send(f"start {run}")
    client.expect("started", 10)
    published = publish(server, topic, rate, args.seconds, run, args.size)
    client.send(f"end {published['last_seq']} {int(args.drain * 1000)}")
    client.expect("report", args.drain + 30)
    spy.wait(60)
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames[1:]):
            inclusive[frame] += n
    raw.unlink()
    lines = [f"py-spy, {total} samples of the busy relay worker at {rate} events/s", "",
             "self (the function on top of the stack):"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(20)]
    lines += ["", "inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(25)]
    out.write_text("\n".join(lines) + "\n")
    return "\n".join(lines[:14])


Row = dict[str, Any]


def arena_mib(n: int, rate: int, args: argparse.Namespace, framed: int = 50) -> int:
    """The client's arena for SSELOAD_DEFER: every byte of the top rate's run (and a second
    more), framed, with a quarter to spare; at most 8 GiB."""
    nbytes = n * rate * (args.seconds + 1) * (args.size + framed) * 1.25
    return max(64, min(8192, int(nbytes) >> 20))


def bench_server(name: str, n: int, rates: list[int], args: argparse.Namespace,
                 directory: Path, run_ids: list[int]) -> tuple[Row, list[Row]]:
    server = start(name, directory / f"{name}-{n}")
    topic = f"fanout-{name}-{n}".replace("+", "")
    client = None
    rows: list[dict[str, Any]] = []
    try:
        time.sleep(1)
        rss0 = rss_kib(server.pids())
        multi = (*MULTI, f"{topic}-") if name == "ssedge-multi" else None
        client = LoadClient(server.port, server.sub_path(topic), n, multi,
                            defer_mib=arena_mib(n, max(rates), args) if args.defer else 0)
        ready = client.expect("ready", 120)
        time.sleep(2)  # let the server settle before reading its memory
        rss1 = rss_kib(server.pids())
        idle = {"server": server.name, "conns": n, "connected": ready["connected"],
                "connect_s": ready["connect_s"], "retried": ready["retried"],
                "rss_per_conn_kib": round((rss1 - rss0) / n, 1),
                "rss_mib": round(rss1 / 1024, 1), "client_cpu_s": ready["cpu_s"]}
        print("idle", idle, flush=True)
        for rate in rates:
            run_ids[0] += 1
            run = run_ids[0]
            client.send(f"start {run}")
            client.expect("started", 10)
            cpu0 = cpu_seconds(server.pids())
            parts0 = {k: cpu_seconds(v) for k, v in server.parts().items()}
            writes0 = ssedge_writes(server)
            t0 = time.monotonic()
            published = publish(server, topic, rate, args.seconds, run, args.size)
            client.send(f"end {published['last_seq']} {int(args.drain * 1000)}")
            report = client.expect("report", args.drain + 30)
            wall = time.monotonic() - t0
            cpu = cpu_seconds(server.pids()) - cpu0
            writes1 = ssedge_writes(server)
            split = " / ".join(f"{k} {cpu_seconds(v) - parts0[k]:.2f}"
                               for k, v in server.parts().items())
            ok = report["lost"] == 0 and report["last_s"] <= args.seconds + 1.0
            row = {
                "server": server.name, "conns": n, "rate": rate, "offered_per_s": rate * n,
                "published_per_s": rate * MULTI[0] // MULTI[1] if name == "ssedge-multi"
                else rate,
                # over the publishing time, or until the last event arrived if later
                "delivered_per_s": round(report["events"] / max(report["last_s"], args.seconds)),
                "p50_ms": report["p50_ms"],
                "p99_ms": report["p99_ms"], "max_ms": report["max_ms"],
                "lost": report["lost"], "dup": report["dup"], "closed": report["closed"],
                "server_cpu_s": round(cpu, 2),
                "cpu_us_per_delivery": round(1e6 * cpu / max(1, report["events"]), 2),
                "cpu_split_s": split,
                "client_cpu_s": report["window_cpu_s"], "arena_full": report["arena_full"],
                "wall_s": round(wall, 1),
                "publisher_cpu_s": published["cpu_s"], "publish_failures": published["failures"],
                "status": "ok" if ok else "FAILED",
            }
            if writes0 and writes1 and writes1[1] > writes0[1]:
                row["events_per_write"] = round(
                    (writes1[0] - writes0[0]) / (writes1[1] - writes0[1]), 1)
            print("run", row, flush=True)
            rows.append(row)
            if not ok:
                break  # a server that cannot keep up is not run at higher rates
            time.sleep(1)
        ok_rates = [r["rate"] for r in rows if r["status"] == "ok"]
        if (args.profile and isinstance(server, Ssedge) and name == "ssedge-1w"
                and n == max(args.conns) and ok_rates):
            run_ids[0] += 1
            out = Path(args.report).with_name("fanout-profile.txt")
            print(profile(server, client, topic, max(ok_rates), args, run_ids[0], out),
                  flush=True)
        return idle, rows
    finally:
        if client is not None:
            client.close()
        server.stop()


def conditions(args: argparse.Namespace) -> dict[str, str]:
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in
                         ("granian", "uvloop", "redis", "uvicorn", "sse-starlette", "starlette"))
    return {
        "machine": machine(),
        # the machine is shared: how busy it was says how far the figures can be trusted
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "software": f"CPython {platform.python_version()}, {versions}; "
                    f"{version_of(['redis-server', '--version'])}; "
                    f"{version_of(['nginx', '-v'])}, "
                    f"{version_of(['dpkg-query', '-W', 'libnginx-mod-nchan'])}; "
                    f"{version_of(['varnishd', '-V'])}",
        "load": f"one topic, all clients subscribed (ssedge-multi: each client on {MULTI[1]} "
                f"of {MULTI[0]} topics, events round robin over them, {MULTI[0] // MULTI[1]} "
                f"times the rate published so each client gets `rate`); {args.size} B of data "
                "per event "
                f"(`RUN:SEQ:TS_US:xxx…`, about {args.size + 30} B framed); each rate published "
                f"for {args.seconds:g} s, paced every ms; losses counted {args.drain:g} s after "
                "the last publish",
        "client": "bench/sseload (C, epoll, one thread, one connection per stream, reads "
                  "every byte, decodes chunked bodies and `data:` lines"
                  + ("; SSELOAD_DEFER: while a rate is measured it only reads, keeping each "
                     "read's bytes with its time, and decodes them after the window, so its "
                     "parsing takes no core from the server on these 2 cores; client CPU is "
                     "its CPU in the window)" if args.defer else ")"),
        "publishers": "ssedge: XADD into Redis pipelined per ms (the feed is what is measured); "
                      "Nchan: one POST per event (its publisher takes one message per request), "
                      "pipelined per ms; sse-starlette: one POST per ms with the events as lines",
        "servers": "ssedge relay (Granian ASGI, uvloop, 8 KiB HTTP/1 buffers) with redis-server "
                   "(no persistence), heartbeat 15 s; varnishd with varnish/params "
                   "(thread_pool_max=6000); nginx with `worker_processes` 1 or 2; uvicorn with "
                   "uvloop and httptools, one process. Server CPU = every process of the server "
                   "(relay workers, Redis, varnishd, nginx master+workers, uvicorn)",
    }


def table(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n" + "\n".join(
        "| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in rows)


def parse_rates(texts: list[str]) -> dict[int, list[int]]:
    out = {}
    for text in texts:
        n, _, rates = text.partition(":")
        out[int(n)] = [int(r) for r in rates.split(",")]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rates", nargs="+", default=["1000:10,100,300,1000,3000",
                                                        "10000:1,10,30,100,300"],
                        help="N:r1,r2,… publish rates (events/s) at N connections")
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--seconds", type=float, default=6.0, help="publishing time per rate")
    parser.add_argument("--drain", type=float, default=5.0,
                        help="seconds after the last publish until missing events are lost")
    parser.add_argument("--size", type=int, default=150, help="bytes of data per event")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the 1-worker relay at the largest N and its top rate")
    parser.add_argument("--no-defer", dest="defer", action="store_false",
                        help="the client decodes as it reads (before 2026-12-07: its parsing "
                        "shared the 2 cores with the server while measured)")
    parser.add_argument("--smoke", action="store_true",
                        help="check the harness: 200 connections, rates 10 and 100, 2 s each")
    parser.add_argument("--report", default=None,
                        help="Markdown results file (docs/results/fanout.md; a smoke run's "
                             "goes to bench-results/, never over the real figures)")
    args = parser.parse_args()
    if args.smoke:
        args.conns, args.rates, args.seconds = [200], ["200:10,100"], 2.0
    if args.report is None:
        args.report = "bench-results/fanout-smoke.md" if args.smoke else "docs/results/fanout.md"
    rates = parse_rates(args.rates)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if not SSELOAD.exists():
        raise SystemExit(f"{SSELOAD} is missing: make bench/sseload")
    cond = conditions(args)
    for key, value in cond.items():
        print(f"{key}: {value}", flush=True)
    idles: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    run_ids = [0]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.conns:
            for name in args.servers:
                if name == "ssedge-varnish" and n > VARNISH_MAX_STREAMS:
                    print(f"skipped: {name} at {n} (one varnishd holds ~{VARNISH_MAX_STREAMS})")
                    continue
                if name == "ssedge-multi" and n > MULTI_MAX_CONNS:
                    print(f"skipped: {name} at {n} (its row is at {MULTI_MAX_CONNS})")
                    continue
                try:
                    idle, runs = bench_server(name, n, rates[n], args, Path(tmp), run_ids)
                except (RuntimeError, TimeoutError, OSError) as exc:
                    print(f"error: {name} at {n}: {exc}", flush=True)
                    rows.append({"server": name, "conns": n, "status": f"error: {exc}"})
                    continue
                idles.append(idle)
                rows += runs
    took = time.monotonic() - started
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(
        "# Fan-out: ssedge and its peers, one topic\n\n"
        f"- command: `python -m bench.fanout {' '.join(sys.argv[1:])}`\n"
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, took {took:.0f} s\n"
        + "".join(f"- {k}: {v}\n" for k, v in cond.items())
        + f"- load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n"
        + "\n## Idle streams: connect time and resident memory\n\n" + table(idles)
        + "\n\n## Under load\n\n" + table(rows) + "\n")
    print(f"report: {report} ({took:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
