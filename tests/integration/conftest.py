from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from playwright.sync_api import Browser, sync_playwright

from relay.harness.cluster import LocalCluster
from relay.harness.edge import Edge
from relay.harness.processes import free_port
from relay.harness.servers import IngestProcess, RedisServer, Relay
from tests.integration.upstack import UpStack
from tests.integration.upstreams import Upstreams

TOKEN = "test-token"
CHROMIUM = "/usr/bin/chromium"  # Debian's (make system); Playwright drives it, no download


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


@contextlib.contextmanager
def _starter(tmp_path: Path, redis: RedisServer, command: str) -> Iterator[Callable[..., Relay]]:
    """A function that starts ``ssedge relay`` or ``ssedge replay`` processes, all stopped
    (by PID) when the test ends."""
    started: list[Relay] = []

    def start(**settings: Any) -> Relay:
        server = Relay(tmp_path, redis, TOKEN, command=command, **settings)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def start_relay(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[..., Relay]]:
    with _starter(tmp_path, redis_server, "relay") as start:
        yield start


@pytest.fixture
def start_replay(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[..., Relay]]:
    with _starter(tmp_path, redis_server, "replay") as start:
        yield start


@pytest.fixture
def relay(start_relay: Callable[..., Relay]) -> Relay:
    return start_relay(heartbeat_s=0.5, topic_linger_s=0)


@pytest.fixture
def start_edge(tmp_path: Path) -> Iterator[Callable[..., Edge]]:
    """Starts the edge as ``make up`` runs it: HAProxy in front (streams straight to the
    relays, TLS and HTTP/2), varnishd behind it for the cacheable answers (params: varnishd's);
    every one stopped (by PID) when the test ends."""
    started: list[Edge] = []

    def start(relays: list[Relay], replay: Relay | None, *params: str,
              port: int | None = None, **options: Any) -> Edge:
        edge = Edge(tmp_path / f"edge-{len(started)}", relays, replay, params, port, **options)
        started.append(edge)
        return edge

    yield start
    for edge in started:
        edge.stop()


@pytest.fixture
def start_varnish(start_edge: Callable[..., Edge]) -> Callable[..., Edge]:
    """The edge tests' fixture (named when varnishd was the whole edge): the full edge."""
    return start_edge


@pytest.fixture
def upstreams() -> Iterator[Upstreams]:
    servers = Upstreams()
    yield servers
    servers.close()


@pytest.fixture
def start_ingest(tmp_path: Path, redis_server: RedisServer
                 ) -> Iterator[Callable[..., IngestProcess]]:
    """Starts ``ssedge ingest`` processes, all stopped (by PID) when the test ends."""
    started: list[IngestProcess] = []

    def start(*args: str, environ: dict[str, str] | None = None,
              **settings: Any) -> IngestProcess:
        process = IngestProcess(tmp_path, redis_server, list(args), environ, **settings)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless Chromium through Playwright's sync API (which runs an event loop on the test's
    thread: start servers before it, or from another thread)."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[UpStack]:
    """``ssedge up`` on free ports, up, stopped (by PID) at the end. Every write is on disk
    before its 201 (``--fsync always``): the tests that SIGKILL Redis require every
    acknowledged event, and with everysec a slow disk makes Redis acknowledge writes it holds
    back for up to 2 s (docs/RELIABILITY.md)."""
    up = UpStack(tmp_path / "state", "--fsync", "always")
    try:
        up.wait_up()
        yield up
    finally:
        up.stop()


# a real local Redis Cluster (3 primaries, 3 replicas) and relays on it
@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    ports = [free_port() for _ in range(6)]
    c = LocalCluster(tmp_path / "cluster", ports, bus_ports=[free_port() for _ in range(6)],
                     node_timeout_ms=1000)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def cluster_relays(tmp_path: Path, cluster: LocalCluster) -> Iterator[Callable[..., list[Relay]]]:
    """``start(n, **settings)``: n relay nodes on the cluster, all stopped at the end."""
    started: list[Relay] = []
    # SSEDGE_REDIS_URL is set by the helper but unused: SSEDGE_REDIS_CLUSTER wins
    unused = SimpleNamespace(url="redis://127.0.0.1:1/0")

    def start(n: int, **settings: Any) -> list[Relay]:
        new = []
        for _ in range(n):
            relay = Relay(tmp_path, unused, TOKEN,  # type: ignore[arg-type]
                          redis_cluster=cluster.seeds, **settings)
            started.append(relay)
            new.append(relay)
        return new

    try:
        yield start
    finally:
        for r in started:
            r.stop()
