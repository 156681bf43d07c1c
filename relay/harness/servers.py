"""Real servers for the tests and the benchmarks: redis-server, relay nodes, the replay service,
ingest and varnishd, each on a free loopback port.

Every process is started here and stopped here, by its PID (a relay's Granian workers share
its process group, which is signalled as a whole).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from relay import prometheus
from relay.edge.varnish.program import Varnish as VarnishProgram
from relay.harness.processes import (
    free_port,
    port_open,
    spawn,
    stop_group,
    wait_closed,
    wait_until,
)
from relay.web import client


def answers(url: str) -> bool:
    """A GET of ``url`` is answered 200 within 2 s (a process's readiness)."""
    try:
        return asyncio.run(client.request("GET", url, timeout=2)).status == 200
    except OSError:
        return False


class RedisServer:
    """redis-server with AOF, each write fsynced before its reply (``fsync``: ``always``,
    ``everysec``, ``no``; or ``"off"``: no persistence at all); ``replica_of`` a primary."""

    def __init__(self, directory: Path, fsync: str = "always",
                 replica_of: RedisServer | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.fsync = fsync
        self.replica_of = replica_of
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        persistence = (["--appendonly", "no"] if self.fsync == "off" else
                       ["--appendonly", "yes", "--appendfsync", self.fsync])
        replica = (["--replicaof", "127.0.0.1", str(self.replica_of.port)]
                   if self.replica_of else [])
        self.process = spawn(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), *persistence, *replica,
             "--save", "", "--protected-mode", "no"],
            self.directory / "redis.log", None,
        )
        wait_until(lambda: port_open(self.port), 10, "redis-server", self.process)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            stop_group(self.process, sig)

    def cli(self, *args: str) -> str:
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                             check=True, timeout=10)
        return out.stdout.decode().strip()


# proxies the outside HTTP client would take from the environment (relay.web.outside)
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class Relay:
    """A relay node (``ssedge relay``), or with ``command="replay"`` the replay service.

    ``host`` is the address it listens on (loopback unless a test built another interface);
    ``start()`` after ``stop()`` runs it again on the same port with the same settings."""

    def __init__(self, log_dir: Path, redis: RedisServer, token: str, command: str = "relay",
                 host: str = "127.0.0.1", port: int | None = None, **settings: Any) -> None:
        self.command = command
        self.host = host
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        # no proxy from the test's own environment either: a JWKS server is on loopback
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SSEDGE_") and k.lower() not in _PROXY_VARIABLES}
        env.update({
            "SSEDGE_REDIS_URL": redis.url,
            "SSEDGE_PUBLISH_TOKEN": token,
            "SSEDGE_PORT" if command == "relay" else "SSEDGE_REPLAY_PORT": str(self.port),
            "SSEDGE_HOST" if command == "relay" else "SSEDGE_REPLAY_HOST": host,
            # tests stop relays with streams still open: a short drain keeps them quick
            "SSEDGE_DRAIN_S": "1",
        })
        env.update({"SSEDGE_" + k.upper(): str(v) for k, v in settings.items()})
        self.env = env
        self.log = log_dir / f"{command}-{self.port}.log"
        self.start()

    def start(self) -> None:
        wait_closed(self.port, self.host)
        self.process = spawn([sys.executable, "-m", "relay", self.command], self.log, self.env)
        wait_until(self._ready, 20, f"{self.command} on {self.port}", self.process)

    def _ready(self) -> bool:
        return port_open(self.port, self.host) and answers(self.url + "/readyz")

    @property
    def pid(self) -> int:
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """Granian's worker processes (children of the main process)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        return [int(pid) for pid in children.split()]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_group(self.process, sig)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for {pid}")


class IngestProcess:
    """``ssedge ingest ARGS``, its ``/metrics`` on a free port; ready when ``/healthz`` is."""

    def __init__(self, log_dir: Path, redis: RedisServer, args: list[str],
                 environ: dict[str, str] | None = None, **settings: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # no proxy from the test's own environment: the upstreams are on loopback (a test
        # that wants one says so in ``environ``)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SSEDGE_") and k.lower() not in _PROXY_VARIABLES}
        env.update({"SSEDGE_REDIS_URL": redis.url, "SSEDGE_INGEST_PORT": str(self.port)})
        env.update({"SSEDGE_" + k.upper(): str(v) for k, v in settings.items()})
        env.update(environ or {})
        self.log = log_dir / f"ingest-{self.port}.log"
        self.process = spawn([sys.executable, "-m", "relay", "ingest", *args], self.log, env)
        wait_until(self._ready, 20, f"ingest on {self.port}", self.process)

    def _ready(self) -> bool:
        return port_open(self.port) and answers(self.url + "/healthz")

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """Every sample of ``/metrics``: name, labels, value."""
        response = asyncio.run(client.request("GET", self.url + "/metrics", timeout=5))
        return [(s.name, s.labels, s.value) for s in prometheus.parse(response.body.decode())]

    def metric(self, name: str, upstream: str, **labels: str) -> float:
        """One upstream's value of ``ssedge_ingest_<name>`` (summed over other labels)."""
        return sum(v for n, lab, v in self.samples() if n == f"ssedge_ingest_{name}"
                   and lab.get("upstream") == upstream
                   and all(lab.get(k) == want for k, want in labels.items()))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_group(self.process, sig)


class Varnish:
    """varnishd with ssedge's VCL in front of the given relays and replay service."""

    def __init__(self, directory: Path, relays: list[Relay], replay: Relay | None,
                 extra_params: tuple[str, ...] = (), port: int | None = None) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()  # given: relays that fetch history through it know it
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = directory / "work"
        replay_addr = ("127.0.0.1", replay.port if replay else free_port())
        self.program = VarnishProgram(f"127.0.0.1:{self.port}", replay_addr, self.workdir,
                                      extra_params=extra_params, storage="malloc,64m")
        self.program.write(directory, [("127.0.0.1", r.port) for r in relays])
        self.argv = self.program.command(directory)
        self.start()

    def start(self) -> None:
        """Start varnishd (again, after ``stop()``: same port, same VCL)."""
        wait_closed(self.port)
        self.process = spawn(self.argv, self.directory / "varnishd.log", None)
        wait_until(self._ready, 30, "varnishd", self.process)

    def _ready(self) -> bool:
        return port_open(self.port) and answers(self.url + "/v1/handshake")

    def healthy(self) -> dict[str, bool]:
        """What varnishd thinks of each backend now (``relay_1``, …, ``replay``)."""
        out = subprocess.run(["varnishadm", "-n", str(self.workdir), "backend.list"],
                             capture_output=True, check=True, timeout=10).stdout.decode()
        health = {}
        for line in out.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 4:
                health[fields[0].split(".", 1)[-1]] = fields[3] == "healthy"
        return health

    def set_health(self, backend: str, state: str) -> None:
        """Force a backend ``sick`` or ``healthy``, or give it back to its probe (``auto``)."""
        subprocess.run(["varnishadm", "-n", str(self.workdir), "backend.set_health", backend,
                        state], capture_output=True, check=True, timeout=10)

    def stats(self) -> dict[str, int]:
        return self.program.stats()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_group(self.process, sig)


async def metrics(url: str) -> dict[str, float]:
    """Each metric summed over its label sets."""
    response = await client.request("GET", url + "/metrics")
    return prometheus.sums(response.body.decode())


async def publish(url: str, token: str, topic: str, events: list[dict[str, Any]]) -> list[str]:
    """Publish as publishers should: with an Idempotency-Key, retried with it (through the
    edge a relay dying under a publish is then no failure, and no duplicate)."""
    response, _ = await client.publish(f"{url}/v1/streams/{topic}/events", events,
                                       token=token, attempts=5, delay_max=1.0)
    assert response.status == 201, response.body
    return list(response.json()["ids"])
