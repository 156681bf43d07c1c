"""``ssedge stats``: the dashboard's collector, one small process next to the stack.

Every interval it scrapes each relay node's ``/metrics`` (all at once, each bounded by the
interval), takes the edge's request counts from a ``varnishncsa`` it keeps running (and,
given HAProxy's socket, the streams the edge proxy carries per relay:
``relay.edge.haproxy.stats``), and
publishes one snapshot (``relay.dashboard.stats``) to the stats topic by XADD, with a retention
of its own. The dashboard is then an EventSource on that topic through the edge like any other
reader: the ring's history gives it the last minutes at once (``backfill``), and one collector
serves every operator watching. A node that does not answer is shown as down; an edge log that
stops is restarted; Redis away skips a snapshot. Nothing here is on the path of an event. Under
``ssedge up`` each snapshot also carries the stack's children (state, restarts, last exit) from
the supervisor's status file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
from redis.exceptions import RedisError

from relay import logs, stackstatus
from relay.dashboard import stats
from relay.edge.haproxy import stats as edge_stats
from relay.edge.haproxy.admin import Admin
from relay.edge.varnish import config as edge
from relay.storage import clients, presence
from relay.storage import streams as store
from relay.web import client

log = logging.getLogger("ssedge.stats")

_json = msgspec.json.Encoder()
# how the edge handled each client request, and its path (the query is left out)
NCSA_FORMAT = "%{Varnish:handling}x %U"


@dataclass(frozen=True)
class Options:
    relays: tuple[str, ...]
    redis_url: str
    redis_cluster: str = ""  # seed nodes: publish to the Redis Cluster instead
    varnish_name: str | None = None  # varnishd's working directory (-n); None: no edge
    interval_s: float = 1.0
    topic: str = stats.TOPIC
    keep: int = 3600  # snapshots kept in the stream (XADD MAXLEN ~): an hour at 1 s
    supervisor: str | None = None  # ``ssedge up``'s supervisor.json; None: not under it
    log_level: str = "info"
    log_format: str = "text"
    haproxy_socket: str | None = None  # the edge proxy's runtime API; None: no proxy numbers
    audience_period_s: float = 2.0  # the relays' SSEDGE_AUDIENCE_PERIOD_S


class EdgeLog:
    """Counts edge requests from a ``varnishncsa`` child, restarted if it ends."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts = stats.EdgeCounts()
        self.error: str | None = "edge log not read yet"
        self._process: asyncio.subprocess.Process | None = None

    async def run(self) -> None:
        program = edge.varnishncsa()
        while True:
            try:
                self._process = await asyncio.create_subprocess_exec(
                    program, "-n", self.name, "-t", "off", "-F", NCSA_FORMAT,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
                assert self._process.stdout is not None
                self.error = None
                async for line in self._process.stdout:
                    self.counts.add_line(line.decode("latin-1"))
                self.error = f"varnishncsa ended ({await self._process.wait()})"
            except OSError as exc:
                self.error = f"varnishncsa: {exc}"
            log.warning("%s; restarting it in a second", self.error)
            await asyncio.sleep(1.0)

    def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.terminate()


async def scrape(url: str, timeout: float) -> tuple[stats.Scrape | None, str | None]:
    try:
        response = await client.request("GET", url + "/metrics", timeout=timeout)
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        return None, str(exc) or type(exc).__name__
    if response.status != 200:
        return None, f"/metrics answered {response.status}"
    return stats.parse_metrics(response.body.decode(errors="replace"), time.time(), url), None


async def collect(options: Options, stop: asyncio.Event) -> None:
    redis = clients.connect(options)
    edge_log = EdgeLog(options.varnish_name) if options.varnish_name else None
    reader = asyncio.ensure_future(edge_log.run()) if edge_log else None
    previous: dict[str, stats.Scrape] = {}
    previous_edge: stats.EdgeCounts | None = None
    previous_t = time.time()
    try:
        while not stop.is_set():
            started = time.time()
            results = await asyncio.gather(
                *(scrape(url, options.interval_s) for url in options.relays))
            nodes = []
            for url, (cur, error) in zip(options.relays, results, strict=True):
                nodes.append(stats.node_snapshot(url, previous.get(url), cur, error))
                if cur is not None:
                    previous[url] = cur
            edge_part = None
            if edge_log is not None:
                counts = edge_log.counts.copy()
                edge_part = stats.edge_snapshot(previous_edge, counts, started - previous_t)
                previous_edge = counts
            previous_t = started
            stack = (stats.stack_part(stackstatus.read_status(Path(options.supervisor)))
                     if options.supervisor else None)
            snap = stats.snapshot(started, options.interval_s, nodes, edge_part,
                                  edge_log.error if edge_log else "no edge configured", stack)
            if options.haproxy_socket:
                snap["edge"]["proxy"] = await _proxy(options.haproxy_socket, options.interval_s)
            snap["audience"] = await _audience(redis, options)
            try:
                await store.publish(redis, options.topic, [(_json.encode(snap), stats.EVENT)],
                                    maxlen=options.keep, max_age_s=0)
            except (RedisError, OSError) as exc:
                log.warning("snapshot not published: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, started + options.interval_s
                                                         - time.time()))
    finally:
        if edge_log is not None:
            edge_log.stop()
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        await redis.aclose()


async def _audience(redis: clients.Client, options: Options) -> dict[str, object]:
    """The busiest topics across every relay (what ``ssedge top`` shows), or why not."""
    try:
        seen = await asyncio.wait_for(
            presence.everything(redis, presence.ttl_ms(options.audience_period_s)),
            options.interval_s)
    except (RedisError, OSError, TimeoutError) as exc:
        return {"error": str(exc) or type(exc).__name__}
    return stats.audience_part(seen.topics, seen.processes)


async def _proxy(path: str, timeout: float) -> dict[str, object]:
    """The edge proxy's streams per relay (``relay.edge.haproxy.stats``), or why not."""
    admin = Admin(Path(path), timeout=timeout)
    try:
        rows = await asyncio.wait_for(asyncio.to_thread(admin.stat), timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        return {"up": False, "error": f"haproxy {path}: {exc}"}
    return {"up": True, **edge_stats.proxy_snapshot(rows)}


def run(options: Options) -> int:
    logs.setup(options.log_level, options.log_format)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("collecting %s every %.1f s into topic %s", ", ".join(options.relays),
                 options.interval_s, options.topic)
        await collect(options, stop)

    asyncio.run(main())
    return 0
