"""A local Redis Cluster of Debian's redis-server processes, for the tests, the benchmarks and
``ssedge up --cluster`` (``relay.devstack.cluster``).

``LocalCluster`` starts 3 primaries and (by default) one replica each on loopback, joins them
with ``redis-cli --cluster create`` and waits until every node reports ``cluster_state:ok``.

Settings that matter for a relay tier (docs/SCALING.md):

- ``cluster-require-full-coverage no``: while one primary is failed over, the slots of the
  other primaries keep answering (with ``yes`` the whole cluster refuses every command);
- ``cluster-node-timeout``: how long a primary may be silent before its replica takes over;
  short here (1 s) so that a failover takes a couple of seconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from relay.harness.processes import SETPRIV, port_open


class LocalCluster:
    """Redis Cluster nodes on 127.0.0.1, each a redis-server in its own process group."""

    def __init__(self, directory: Path, ports: Sequence[int], *, replicas: int = 1,
                 node_timeout_ms: int = 1000, bus_ports: Sequence[int] | None = None,
                 appendfsync: str = "everysec", tied: bool = False) -> None:
        self.directory = directory
        # tied: each node stops with this process (SIGTERM when it dies, even by SIGKILL),
        # as ``ssedge up --cluster`` wants; only when started from a thread that lives as
        # long as the process (the parent death signal follows the thread that forked)
        self.tied = tied
        self.ports = list(ports)
        self.bus_ports = list(bus_ports or [p + 10000 for p in ports])
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.appendfsync = appendfsync
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def seeds(self) -> str:
        """``SSEDGE_REDIS_CLUSTER`` for these nodes."""
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self) -> None:
        """Start every node, and create the cluster unless these nodes already form one."""
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = all((self.directory / str(p) / "nodes.conf").is_file() for p in self.ports)
        for port in self.ports:
            self.start_node(port)
        if not existing:
            out = subprocess.run(
                ["redis-cli", "--cluster", "create",
                 *(f"127.0.0.1:{p}" for p in self.ports),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                capture_output=True, timeout=60)
            if out.returncode != 0:
                raise RuntimeError("redis-cli --cluster create failed: "
                                   + out.stdout.decode()[-500:] + out.stderr.decode()[-500:])
        self.wait_ok(30)

    def start_node(self, port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(exist_ok=True)
        bus = self.bus_ports[self.ports.index(port)]
        argv = [
            shutil.which("redis-server") or "redis-server",
            "--port", str(port), "--cluster-port", str(bus), "--bind", "127.0.0.1",
            "--protected-mode", "no", "--dir", str(node_dir.resolve()),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-require-full-coverage", "no",
            "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
        ]
        if self.tied and SETPRIV:
            argv = [SETPRIV, "--pdeathsig", "TERM", "--", *argv]
        with open(node_dir / "redis.log", "ab") as log:
            self.processes[port] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                    start_new_session=True)
        deadline = time.monotonic() + 10
        while not port_open(port):
            if self.processes[port].poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on {port} did not start (see {node_dir})")
            time.sleep(0.05)

    def cli(self, port: int, *args: str) -> str:
        out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                             check=True, timeout=10)
        return out.stdout.decode().strip()

    def nodes(self) -> list[dict[str, str]]:
        """``CLUSTER NODES`` as seen by a live node: id, port, role, primary id, slots."""
        for port in self.ports:
            if not self.alive(port):
                continue
            with contextlib.suppress(subprocess.SubprocessError):
                out = []
                for line in self.cli(port, "CLUSTER", "NODES").splitlines():
                    f = line.split()
                    out.append({
                        "id": f[0], "port": f[1].split("@")[0].rsplit(":", 1)[1],
                        "role": "primary" if "master" in f[2] else "replica",
                        "failed": str("fail" in f[2] and "fail?" not in f[2]),
                        "primary": f[3], "slots": " ".join(f[8:]),
                    })
                return out
        raise RuntimeError("no cluster node answers")

    def primaries(self) -> list[int]:
        return sorted(int(n["port"]) for n in self.nodes()
                      if n["role"] == "primary" and n["slots"] and self.alive(int(n["port"])))

    def replica_of(self, port: int) -> int:
        nodes = self.nodes()
        primary = next(n["id"] for n in nodes if n["port"] == str(port))
        return next(int(n["port"]) for n in nodes if n["primary"] == primary)

    def alive(self, port: int) -> bool:
        process = self.processes.get(port)
        return process is not None and process.poll() is None

    def wait_ok(self, timeout: float) -> None:
        """Until every live node says ``cluster_state:ok`` and knows 3 primaries with slots,
        and every live replica is in sync with its primary (a publish waits for one)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                live = [p for p in self.ports if self.alive(p)]
                states = [self.cli(p, "CLUSTER", "INFO") for p in live]
                links = [self.cli(p, "INFO", "replication") for p in live]
                if (all("cluster_state:ok" in s for s in states) and len(self.primaries()) == 3
                        and all("role:master" in i or "master_link_status:up" in i
                                for i in links)):
                    return
            except (subprocess.SubprocessError, RuntimeError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster is not ok after {timeout} s")
            time.sleep(0.1)

    def kill(self, port: int, sig: int = signal.SIGKILL) -> None:
        process = self.processes[port]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        process.wait(10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
