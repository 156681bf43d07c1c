"""``ssedge up``: the local stack in the foreground, stopped as a whole by Ctrl-C.

Its own redis-server (AOF on, data under ``.ssedge/redis``), the replay service, two relay
nodes, varnishd in front of them on :8080 (working directory under ``.ssedge/varnish``), a
demo publisher, and a demo upstream SSE server with an ``ssedge ingest`` of it into the
``ingest-demo`` topic. The publish token and the stack's settings are written under
``.ssedge/`` so that ``ssedge`` commands run in the checkout find them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REDIS_PORT = 6390
RELAY_PORTS = (8101, 8102)
REPLAY_PORT = 8201
EDGE_PORT = 8080
UPSTREAM_PORT = 8401
INGEST_PORT = 8301
DEMO_TOPIC = "demo"
INGEST_TOPIC = "ingest-demo"


@dataclass
class Service:
    name: str
    port: int
    process: subprocess.Popen[bytes]


def _port_busy(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_port(port: int, process: subprocess.Popen[bytes], name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode}")
        if _port_busy(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not open port {port} within {timeout:.0f} s")


def _token(directory: Path, name: str = "publish-token", size: int = 24) -> str:
    path = directory / name
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    token = secrets.token_urlsafe(size)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


def _demo_publisher(url: str, token: str, stop: threading.Event) -> None:
    """Publishes a small JSON tick to the demo topic every second."""
    from relay import client

    n = 0
    while not stop.wait(1.0):
        n += 1
        body = {"data": {"n": n, "at": time.time()}, "event": "tick"}
        with contextlib.suppress(Exception):  # retried with its Idempotency-Key: once
            asyncio.run(client.publish(f"{url}/v1/streams/{DEMO_TOPIC}/events", body,
                                       token=token, attempts=3, timeout=5))


def ports_free(ports: Sequence[int]) -> bool:
    """False, having said which, when one of ``ports`` is taken."""
    for port in ports:
        if _port_busy(port):
            print(f"ssedge up: port {port} is in use (is another stack running?)",
                  file=sys.stderr)
            return False
    return True


class Processes:
    """A stack's children, each in a process group of its own (Ctrl-C reaches the stack, which
    then stops each child in order), logs under the stack's directory."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = {**os.environ, **env}
        self.services: list[Service] = []
        self.stop = threading.Event()
        # explicit handlers: a stack started from a script may inherit SIGINT ignored
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())

    def start(self, name: str, port: int, argv: list[str]) -> None:
        """Start a child and wait for its port (0: it listens on none)."""
        log = open(self.directory / f"{name}.log", "ab")  # noqa: SIM115 - lives as the child
        process = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.services.append(Service(name, port, process))
        if port:
            _wait_port(port, process, name, 20)

    def edge_tier(self, relay_ports: Sequence[int], replay_port: int, edge_port: int) -> None:
        """The replay service, the relays, varnishd in front of them, and the dashboard's
        collector of every relay's and the edge's numbers (topic ssedge.stats)."""
        from relay import edge

        self.start("replay", replay_port, [sys.executable, "-m", "relay", "replay"])
        for i, port in enumerate(relay_ports, 1):
            self.start(f"relay-{i}", port, [sys.executable, "-m", "relay", "relay", "--port",
                                            str(port), "--node-name", f"relay-{i}"])
        varnish_dir = self.directory / "varnish"
        varnish_dir.mkdir(exist_ok=True)
        (varnish_dir / "backends.vcl").write_text(edge.backends_vcl(
            [("127.0.0.1", p) for p in relay_ports], ("127.0.0.1", replay_port)))
        work = (varnish_dir / "work").resolve()
        self.start("varnish", edge_port, edge.command(work, f"127.0.0.1:{edge_port}",
                                                      varnish_dir.resolve()))
        self.start("stats", 0, [sys.executable, "-m", "relay", "stats",
                                *(a for p in relay_ports
                                  for a in ("--relay", f"http://127.0.0.1:{p}")),
                                "--varnish-name", str(work)])

    def serve(self, up: Callable[[], None]) -> None:
        """Start the stack with ``up``, watch it until Ctrl-C, SIGTERM or a child ending on its
        own, then stop every child, also when ``up`` failed half way."""
        try:
            up()
            self._supervise()
        except KeyboardInterrupt:
            pass
        except RuntimeError as exc:  # a child that did not come up
            print(f"ssedge up: {exc}", file=sys.stderr)
        finally:
            self.stop_all()

    def _supervise(self) -> None:
        while not self.stop.wait(0.5):
            for service in self.services:
                if service.process.poll() is not None:
                    print(f"ssedge up: {service.name} exited ({service.process.returncode}); "
                          f"see {self.directory}/{service.name}.log", file=sys.stderr)
                    self.stop.set()

    def stop_all(self) -> None:
        self.stop.set()
        for service in reversed(self.services):
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        for service in reversed(self.services):
            try:
                service.process.wait(10)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()


def run(directory: Path, redis_port: int = REDIS_PORT,
        relay_ports: tuple[int, ...] = RELAY_PORTS, replay_port: int = REPLAY_PORT,
        edge_port: int = EDGE_PORT, upstream_port: int = UPSTREAM_PORT,
        ingest_port: int = INGEST_PORT) -> int:
    from relay import edge

    redis_server = shutil.which("redis-server")
    for program, package in ((redis_server, "redis-server"), (edge.varnishd(), "varnish")):
        if program is None:
            print(f"ssedge up: {package} is not installed (apt-get install {package})",
                  file=sys.stderr)
            return 1
    assert redis_server is not None
    if not ports_free((redis_port, replay_port, edge_port, upstream_port, ingest_port,
                       *relay_ports)):
        return 1
    directory.mkdir(exist_ok=True)
    (directory / "redis").mkdir(exist_ok=True)
    token = _token(directory)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    base_url = f"http://127.0.0.1:{edge_port}"
    replay_url = f"http://127.0.0.1:{replay_port}"
    env = {
        "SSEDGE_REDIS_URL": redis_url,
        "SSEDGE_PUBLISH_TOKEN": token,
        "SSEDGE_URL": base_url,
        # relays fetch history through Varnish: identical pages collapse across nodes there
        "SSEDGE_REPLAY_URL": base_url,
        "SSEDGE_REPLAY_PORT": str(replay_port),
        # private-* topics need a token: `ssedge token --subscribe 'private-*'` mints one
        "SSEDGE_PRIVATE_TOPICS": "private-*",
        "SSEDGE_JWT_SECRET": _token(directory, "jwt-secret", 48),
        # another `ssedge ingest` in a second shell serves its metrics on a free port
        "SSEDGE_INGEST_PORT": "0",
        # Ctrl-C drains open streams before the relays stop: keep it short here
        "SSEDGE_DRAIN_S": "2",
    }
    (directory / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    children = Processes(directory, env)
    start = children.start

    def up() -> None:
        start("redis", redis_port, [
            redis_server, "--port", str(redis_port), "--bind", "127.0.0.1",
            "--dir", str((directory / "redis").resolve()), "--appendonly", "yes",
            "--save", "", "--protected-mode", "no",
        ])
        children.edge_tier(relay_ports, replay_port, edge_port)
        # an origin that drops its clients now and then: the ingest resumes it by id
        start("upstream", upstream_port, [sys.executable, "-m", "relay", "demo-upstream",
                                          "--port", str(upstream_port), "--drop-every", "30"])
        start("ingest", ingest_port, [
            sys.executable, "-m", "relay", "ingest", "--topic", INGEST_TOPIC,
            "--from", f"demo=http://127.0.0.1:{upstream_port}/events",
            "--ingest-port", str(ingest_port), "--node-name", "ingest-1",
        ])
        threading.Thread(target=_demo_publisher, args=(base_url, token, children.stop),
                         daemon=True).start()
        print(f"""ssedge stack is up (logs in {directory}/):
  edge         {base_url}   <- the one address you need (Varnish)
  demo topic   {base_url}/v1/streams/{DEMO_TOPIC}/events  (a tick every second)
  ingested     {base_url}/v1/streams/{INGEST_TOPIC}/events  (from the demo upstream)
  upstream     http://127.0.0.1:{upstream_port}/events  (a demo origin server)
  ingest       http://127.0.0.1:{ingest_port}/metrics
  relay nodes  {", ".join(f"http://127.0.0.1:{p}" for p in relay_ports)}
  replay       {replay_url}/v1/replay/{DEMO_TOPIC}?after=0-0
  redis        {redis_url}
  publish      token in {directory}/publish-token
  private-*    need a token: .venv/bin/ssedge token --subscribe 'private-*'
  pages        {base_url}/ (live feed)  {base_url}/dashboard (operators)
  try          .venv/bin/ssedge tail {DEMO_TOPIC}
Ctrl-C stops everything.""", flush=True)

    children.serve(up)
    print("ssedge stack stopped.")
    return 0
