"""A local Redis Cluster of Debian's redis-server processes, and ``ssedge up --cluster``.

``LocalCluster`` starts 3 primaries and (by default) one replica each on loopback, joins them
with ``redis-cli --cluster create`` and waits until every node reports ``cluster_state:ok``.
The tests use it on free ports; ``ssedge up --cluster`` on ports 7001-7006 under
``.ssedge/cluster``, with the replay service, three relay nodes and the edge (HAProxy on :8080
and :8443, varnishd behind it).

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
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from relay.devstack.supervisor import SETPRIV, RestartPolicy
from relay.harness.processes import port_open

CLUSTER_PORTS = (7001, 7002, 7003, 7004, 7005, 7006)
RELAY_PORTS = (8101, 8102, 8103)


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


def run(directory: Path, cluster_ports: Sequence[int] = CLUSTER_PORTS,
        relay_ports: Sequence[int] = RELAY_PORTS, replay_port: int = 8201,
        edge_port: int = 8080, policy: RestartPolicy | None = None,
        tls_port: int = 8443) -> int:
    """``ssedge up --cluster``: the cluster, the replay service, three relays and the edge in
    the foreground; Ctrl-C (or SIGTERM) stops them all. The relays, the replay service,
    varnishd and the collector are supervised (restarted when they exit); the cluster's nodes
    are not: a primary that dies is failed over to its replica, which is the point of one."""
    from relay.devstack import demo
    from relay.devstack import edge as edge_stack
    from relay.devstack.single import Processes, ports_free, secret
    from relay.edge.haproxy import config as edge_haproxy
    from relay.edge.varnish import config as edge

    if (shutil.which("redis-server") is None or edge.varnishd() is None
            or edge_haproxy.haproxy() is None):
        print("ssedge up: redis-server, varnish and haproxy are needed (apt-get install "
              "redis-server varnish haproxy)", file=sys.stderr)
        return 1
    if not ports_free((*cluster_ports, *relay_ports, replay_port, edge_port,
                       *([tls_port] if tls_port else []))):
        return 1
    directory.mkdir(exist_ok=True)
    token = secret(directory)
    cluster = LocalCluster(directory / "cluster", cluster_ports, tied=True)
    base_url = f"http://127.0.0.1:{edge_port}"
    env = {
        "SSEDGE_REDIS_CLUSTER": cluster.seeds,
        "SSEDGE_PUBLISH_TOKEN": token,
        "SSEDGE_URL": base_url,
        "SSEDGE_REPLAY_URL": base_url,
        "SSEDGE_REPLAY_PORT": str(replay_port),
        "SSEDGE_DRAIN_S": "2",
        # clients (ssedge tail, load) trust the stack's own CA for its TLS edge
        **({"SSEDGE_CA_FILE": str((directory / "tls" / "ca.pem").resolve())} if tls_port else {}),
    }
    (directory / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    children = Processes(directory, env, policy)

    def up() -> str:
        cluster.start()
        tier = children.edge_tier(relay_ports, replay_port, edge_port, tls_port)
        threading.Thread(target=demo.publish_ticks, args=(base_url, token, children.stop),
                         daemon=True).start()
        return f"""ssedge cluster stack is up (logs in {directory}/):
  edge         {base_url}   <- the one address you need (HAProxy, HTTP/1.1)
{edge_stack.banner(tier)}
  demo topic   {base_url}/v1/streams/demo/events  (a tick every second)
  pages        {base_url}/ (live feed)  {base_url}/dashboard (operators)
  relay nodes  {", ".join(f"http://127.0.0.1:{p}" for p in relay_ports)}
  replay       http://127.0.0.1:{replay_port}/v1/replay/demo?after=0-0
  redis        cluster {cluster.seeds} (3 primaries, 3 replicas; redis-cli -c -p {cluster_ports[0]})
  publish      token in {directory}/publish-token
  try          .venv/bin/ssedge tail demo
Ctrl-C stops everything."""

    try:
        code = children.serve(up)
    finally:
        cluster.stop()
    print("ssedge cluster stack stopped." if code == 0
          else f"ssedge cluster stack stopped (exit {code}).", flush=True)
    return code
