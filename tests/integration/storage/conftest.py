"""A real local Redis Cluster (3 primaries, 3 replicas) and relays on it, for the cluster
tests; every process stopped by its PID when the test ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from relay.harness.cluster import LocalCluster
from relay.harness.processes import free_port
from relay.harness.servers import Relay
from tests.integration.conftest import TOKEN


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
