"""The edge of a local stack (``ssedge up``, ``ssedge up --cluster``): varnishd on an internal
port, HAProxy in front of it and of the relays on the edge's ports, both supervised.

Both are edge programs (``relay.edge.contract``), rendered, checked and started through it.
What runs is the shipped configuration: ``varnish/default.vcl`` with a generated
``backends.vcl`` (``.ssedge/varnish/``), and ``relay/edge/haproxy/haproxy.cfg`` rendered with
the stack's addresses and relay nodes (``.ssedge/haproxy/haproxy.cfg``). The TLS listener uses
the stack's own certificate authority (``.ssedge/tls/``, ``relay.edge.tls``). The internal ports
(varnishd, HAProxy's stats) are free ports taken at start; the banner names them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from relay import settings
from relay.devstack.supervisor import StartFailed, Supervisor
from relay.edge import tls as edge_tls
from relay.edge.contract import ConfigRefused
from relay.edge.haproxy.config import Listen
from relay.edge.haproxy.limits import Limits
from relay.edge.haproxy.program import HAProxy
from relay.edge.varnish.config import CACHE_PARAMS
from relay.edge.varnish.program import Varnish
from relay.harness.processes import free_port

#: HAProxy takes a unix socket path of at most 97 bytes (the kernel, 108)
_SOCKET_PATH_MAX = 97


@dataclass(frozen=True, slots=True)
class EdgeTier:
    """Where a running stack's edge answers."""

    http: int
    https: int  # 0: no TLS listener
    cache: int  # varnishd
    stats: int  # HAProxy's /metrics and /stats
    admin_socket: Path  # level admin: set server … state
    stats_socket: Path  # level operator: show stat (the dashboard's collector)
    varnish_workdir: Path
    ca: Path | None  # the stack's CA, for clients of the TLS listener


def _admin_socket(directory: Path) -> Path:
    path = (directory / "admin.sock").resolve()
    if len(str(path)) <= _SOCKET_PATH_MAX:
        return path
    return Path(tempfile.mkdtemp(prefix="ssedge-edge-")) / "admin.sock"


def check(proxy: HAProxy, directory: Path) -> None:
    """Start-up stops with HAProxy's own one-line reason when the config does not load."""
    try:
        proxy.check(directory)
    except ConfigRefused as exc:
        raise StartFailed(str(exc)) from None


def start(supervisor: Supervisor, relay_ports: Sequence[int], replay_port: int,
          http_port: int, https_port: int, prefix: str = "") -> EdgeTier:
    """varnishd (child ``<prefix>varnish``) and HAProxy (child ``<prefix>edge``) under
    ``supervisor``; ``prefix`` names a second region's edge (``devstack.regions``)."""
    directory = supervisor.directory
    cache_port, stats_port = free_port(), free_port()
    relays = [("127.0.0.1", p) for p in relay_ports]
    varnish_dir = directory / f"{prefix}varnish"
    work = (varnish_dir / "work").resolve()
    cache = Varnish(f"127.0.0.1:{cache_port}", ("127.0.0.1", replay_port), work,
                    extra_params=CACHE_PARAMS)
    cache.write(varnish_dir, relays)
    cache.start(supervisor, varnish_dir.resolve(), cache_port, f"{prefix}varnish")
    certificates = edge_tls.ensure(directory / "tls") if https_port else None
    haproxy_dir = directory / f"{prefix}haproxy"
    haproxy_dir.mkdir(exist_ok=True)
    admin = _admin_socket(haproxy_dir)
    proxy = HAProxy(Listen(
        http=f"127.0.0.1:{http_port}", cache=f"127.0.0.1:{cache_port}",
        stats=f"127.0.0.1:{stats_port}", admin_socket=admin,
        https=f"127.0.0.1:{https_port}" if https_port else None,
        cert=certificates.edge.resolve() if certificates else None,
        # the limits as the settings say (SSEDGE_EDGE_*): the stack's own clients, on
        # 127.0.0.1, are exempt by default; an abuser on 127.0.0.2 meets them
        limits=Limits.of(settings.load())))
    proxy.write(haproxy_dir, relays)
    check(proxy, haproxy_dir)
    proxy.start(supervisor, haproxy_dir, http_port, f"{prefix}edge")
    return EdgeTier(http_port, https_port, cache_port, stats_port, admin,
                    proxy.listen.read_socket, work,
                    certificates.ca.resolve() if certificates else None)


def banner(tier: EdgeTier) -> str:
    """The stack banner's lines about the edge, after its first."""
    lines = []
    if tier.https:
        lines.append(f"  edge (TLS)   https://127.0.0.1:{tier.https}   HTTP/2 for browsers; "
                     f"CA {tier.ca} (curl --cacert)")
    lines.append(f"  edge cache   http://127.0.0.1:{tier.cache}   (varnishd, behind HAProxy)")
    lines.append(f"  edge stats   http://127.0.0.1:{tier.stats}/stats  /metrics "
                 f"(HAProxy; sockets {tier.admin_socket} admin, {tier.stats_socket} read)")
    return "\n".join(lines)
