"""The edge as the stack runs it, for tests and benchmarks: HAProxy in front (HTTP/1.1, and
TLS with HTTP/2) carrying event streams straight to the relays, varnishd behind it for
everything cacheable (relay/edge/haproxy/haproxy.cfg, varnish/default.vcl), on free loopback
ports: the edge programs of ``relay.edge``, started and stopped here rather than supervised.

``Edge`` answers what the tests ask of an edge: its URL and port (HAProxy's), varnishd's
counters (``stats``), each relay's health as both parts see it, a relay forced out of both
and back. Every process is started here and stopped here by its PID.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from relay.edge import tls as edge_tls
from relay.edge.haproxy.config import Listen
from relay.edge.haproxy.limits import DEFAULT, Limits
from relay.edge.haproxy.program import HAProxy
from relay.edge.varnish.config import CACHE_PARAMS
from relay.harness.processes import (
    free_port,
    port_open,
    spawn,
    stop_group,
    wait_closed,
    wait_until,
)
from relay.harness.servers import Relay, Varnish, answers


class Edge:
    """HAProxy on ``port`` (and ``https_port`` with TLS) in front of the relays and of a
    varnishd (``cache``) that holds the cacheable answers; ``extra_params`` go to varnishd.
    ``limits``: the per-client limits, by default the shipped ones with 127.0.0.1 exempt (as
    ``make up``): the tests and benchmarks' own clients are many on one address."""

    def __init__(self, directory: Path, relays: list[Relay], replay: Relay | None,
                 extra_params: tuple[str, ...] = (), port: int | None = None, *,
                 tls: bool = True, stream_timeout: str = "60s",
                 maxconn: int | None = None, limits: Limits = DEFAULT) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()  # given: relays that fetch history through it know it
        self.url = f"http://127.0.0.1:{self.port}"
        self.https_port = free_port() if tls else None
        self.https_url = f"https://127.0.0.1:{self.https_port}" if tls else None
        self.certificates = edge_tls.ensure(directory / "tls") if tls else None
        self.stats_port = free_port()
        self.relays = relays
        self.cache = Varnish(directory / "varnish", relays, replay,
                             (*CACHE_PARAMS, *extra_params))
        # a unix socket's path must fit in 108 bytes: pytest's directories may not
        self._socket_dir = Path(tempfile.mkdtemp(prefix="ssedge-edge-"))
        self.proxy = HAProxy(Listen(
            http=f"127.0.0.1:{self.port}", cache=f"127.0.0.1:{self.cache.port}",
            stats=f"127.0.0.1:{self.stats_port}", admin_socket=self._socket_dir / "admin.sock",
            https=f"127.0.0.1:{self.https_port}" if tls else None,
            cert=self.certificates.edge if self.certificates else None,
            stream_timeout=stream_timeout, maxconn=maxconn, limits=limits))
        self.admin = self.proxy.admin
        self.config = self.proxy.write(directory / "haproxy", [("127.0.0.1", r.port)
                                                               for r in relays])
        self.process: subprocess.Popen[bytes] | None = None
        try:
            self._start_haproxy()
        except BaseException:
            self.cache.stop()
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            raise

    @property
    def workdir(self) -> Path:
        """varnishd's working directory (``varnishncsa -n``, ``varnishstat -n``)."""
        return self.cache.workdir

    @property
    def ca(self) -> Path:
        assert self.certificates is not None, "this edge has no TLS listener"
        return self.certificates.ca

    # -- processes --------------------------------------------------------------------------

    def _start_haproxy(self) -> None:
        wait_closed(self.port)
        self._socket_dir.mkdir(exist_ok=True)
        self.process = spawn(self.proxy.command(self.config.parent),
                             self.directory / "haproxy.log", None)
        wait_until(self._ready, 30, "haproxy", self.process)

    def _ready(self) -> bool:
        # through both parts to a relay, and never a cache hit: varnishd counts a hit when
        # the worker lets the connection go, which may fall inside a test's count
        return (port_open(self.port) and self.admin.path.exists()
                and answers(self.url + "/healthz"))

    def start(self) -> None:
        """Start both parts again after ``stop()``: same ports, same config."""
        if self.cache.process.poll() is not None:
            self.cache.start()
        self._start_haproxy()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop HAProxy (which holds the streams), then varnishd."""
        if self.process is not None:
            stop_group(self.process, sig)
        self.cache.stop(sig)
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    # -- what the tests ask -----------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """varnishd's counters (cache hits, backend requests): the cacheable classes."""
        return self.cache.stats()

    def healthy(self) -> dict[str, bool]:
        """Each backend healthy as both parts see it: a relay is in when HAProxy (streams, and
        publishes, whose servers track these) and varnishd (everything else) both have it; the
        replay service is varnishd's."""
        health = self.cache.healthy()
        for name, status in self.admin.servers().items():
            health[name] = health.get(name, True) and status.startswith("UP")
        return health

    def set_health(self, backend: str, state: str) -> None:
        """Force a relay ``sick`` (out of both parts) or give it back to the probes
        (``auto``); ``healthy`` forces it in for varnishd, ``ready`` for HAProxy."""
        self.cache.set_health(backend, state)
        if backend.startswith("relay_"):  # publishes' servers track these: one state for both
            self.admin.set_state(backend, "maint" if state == "sick" else "ready")

    def streams(self) -> int:
        """Streams HAProxy holds to the relays now (the relays backend's current sessions)."""
        return sum(int(row["scur"] or 0) for row in self.admin.stat()
                   if row["pxname"] == "relays" and row["svname"] == "BACKEND")
