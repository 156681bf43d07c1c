"""``ssedge up --regions``: a second region beside the local stack, reading a replica.

Region A is ``make up``'s stack: the Redis primary (:6390), two relays (:8101, :8102), the
replay service (:8201) and the edge (:8080). Region B stands for relays far from it: a
redis-server replica of the primary (:6391, AOF under ``.ssedge/redis-b``), and its own
replay service (:9201), relays (:9101, :9102) and edge (:9080), started by the same
``Processes.edge_tier`` as region A's. Its relays and replay service read the replica
(``SSEDGE_REDIS_READ_URL``) and write to the primary: a publish in either region lands on the
primary, and an event has the same id in both, so a reader may move between the two edges
with its Last-Event-ID (docs/SCALING.md, "Regions"). Everything is supervised like the rest
of the stack; the replica's collector publishes to ``ssedge.stats.b``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

NAME = "b"


class Processes(Protocol):
    """What region B asks of the stack that starts it (``single.Processes``), written here so
    that this module needs nothing of the one that imports it."""

    @property
    def directory(self) -> Path: ...

    def start(self, name: str, port: int, argv: list[str],
              env: dict[str, str] | None = None) -> None: ...

    def edge_tier(self, relay_ports: Sequence[int], replay_port: int, edge_port: int,
                  tls_port: int = ..., *, region: str = "",
                  env: dict[str, str] | None = None) -> Any: ...


@dataclass(frozen=True, slots=True)
class RegionB:
    """Where region B listens."""

    redis_port: int = 6391
    relay_ports: tuple[int, ...] = (9101, 9102)
    replay_port: int = 9201
    edge_port: int = 9080
    tls_port: int = 9443

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.redis_port, *self.relay_ports, self.replay_port, self.edge_port,
                self.tls_port)

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"

    @property
    def replica_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start(self, children: Processes, redis_server: str, primary_port: int,
              fsync: str) -> None:
        """The replica, then region B's tier on it."""
        data = children.directory / f"redis-{NAME}"
        data.mkdir(exist_ok=True)
        children.start(f"{NAME}-redis", self.redis_port, [
            redis_server, "--port", str(self.redis_port), "--bind", "127.0.0.1",
            "--dir", str(data.resolve()), "--replicaof", "127.0.0.1", str(primary_port),
            # restarted, it has its data at once (older, never another history) while it
            # catches up: empty, it would look like every stream went back
            "--appendonly", "yes", "--appendfsync", fsync, "--save", "",
            "--protected-mode", "no",
        ])
        children.edge_tier(self.relay_ports, self.replay_port, self.edge_port, self.tls_port,
                           region=NAME,
                           env={
                               "SSEDGE_REDIS_READ_URL": self.replica_url,
                               # history through this region's edge, from this region's replica
                               "SSEDGE_REPLAY_URL": self.edge_url,
                               "SSEDGE_REPLAY_PORT": str(self.replay_port),
                               "SSEDGE_URL": self.edge_url,
                           })

    def banner(self, dashboard_query: str = "") -> str:
        """``dashboard_query``: what the dashboard's address carries besides its topic (the
        stack's subscriber token for the private ssedge.* topics)."""
        relays = ", ".join(f"http://127.0.0.1:{p}" for p in self.relay_ports)
        return f"""
region B (reads the replica; publishes land on the primary):
  edge         {self.edge_url}   <- region B's address
  edge (TLS)   https://127.0.0.1:{self.tls_port}   HTTP/2, the same CA as region A's
  demo topic   {self.edge_url}/v1/streams/demo/events  (same ids as region A's)
  relay nodes  {relays}
  replay       http://127.0.0.1:{self.replay_port}/v1/replay/demo?after=0-0
  replica      {self.replica_url} (of the primary; INFO replication, or /metrics ssedge_replica_*)
  dashboard    {self.edge_url}/dashboard?topic=ssedge.stats.{NAME}{dashboard_query}
  try          .venv/bin/ssedge tail demo --url {self.edge_url}"""
