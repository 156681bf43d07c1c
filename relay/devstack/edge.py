"""The edge of a local stack (``ssedge up``, ``ssedge up --cluster``): varnishd on an internal
port, HAProxy in front of it and of the relays on the edge's ports, both supervised.

What runs is the shipped configuration: ``varnish/default.vcl`` with a generated
``backends.vcl`` (``.ssedge/varnish/``), and ``varnish/haproxy.cfg`` rendered with the stack's
addresses and relay nodes (``.ssedge/haproxy/haproxy.cfg``). The TLS listener uses the
stack's own certificate authority (``.ssedge/tls/``, ``relay.devstack.tls``). The internal ports
(varnishd, HAProxy's stats) are free ports taken at start; the banner names them.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from relay.devstack import haproxy as edge_haproxy
from relay.devstack import tls as edge_tls
from relay.devstack import varnish as edge
from relay.devstack.processes import free_port
from relay.devstack.supervisor import StartFailed, Supervisor

#: varnishd behind HAProxy has one client, HAProxy, which keeps connections to it and reuses
#: them. An idle one that varnishd closed (timeout_idle, 5 s by default) just as HAProxy sent
#: a request on it would fail that request; HAProxy closes its own idle connections first.
#: And it holds no stream: varnish/params pre-starts 2 x 2,500 threads for streams (two
#: each), a cache of short answers starts with 2 x 100 and grows to the same maximum.
CACHE_PARAMS = ("timeout_idle=3600", "thread_pool_min=100")
#: HAProxy takes a unix socket path of at most 97 bytes (the kernel, 108)
_SOCKET_PATH_MAX = 97


@dataclass(frozen=True, slots=True)
class EdgeTier:
    """Where a running stack's edge answers."""

    http: int
    https: int  # 0: no TLS listener
    cache: int  # varnishd
    stats: int  # HAProxy's /metrics and /stats
    admin_socket: Path
    varnish_workdir: Path
    ca: Path | None  # the stack's CA, for clients of the TLS listener


def _admin_socket(directory: Path) -> Path:
    path = (directory / "admin.sock").resolve()
    if len(str(path)) <= _SOCKET_PATH_MAX:
        return path
    return Path(tempfile.mkdtemp(prefix="ssedge-edge-")) / "admin.sock"


def check(config: Path) -> None:
    """Start-up stops with HAProxy's own one-line reason when the config does not load."""
    result = subprocess.run(edge_haproxy.check_command(config), capture_output=True, text=True,
                            timeout=30, check=False)
    if result.returncode != 0:
        said = (result.stdout + result.stderr).splitlines()
        # "[ALERT]    (123) : config : parsing [file:96] : what is wrong"
        alerts = [line.split(" : ", 2)[-1] for line in said if "ALERT" in line]
        raise StartFailed(f"haproxy refuses {config}: "
                          f"{(alerts or said or ['no reason given'])[0].strip()}")


def start(supervisor: Supervisor, relay_ports: Sequence[int], replay_port: int,
          http_port: int, https_port: int, prefix: str = "") -> EdgeTier:
    """varnishd (child ``<prefix>varnish``) and HAProxy (child ``<prefix>edge``) under
    ``supervisor``; ``prefix`` names a second region's edge (``devstack.regions``)."""
    directory = supervisor.directory
    cache_port, stats_port = free_port(), free_port()
    varnish_dir = directory / f"{prefix}varnish"
    varnish_dir.mkdir(exist_ok=True)
    (varnish_dir / "backends.vcl").write_text(edge.backends_vcl(
        [("127.0.0.1", p) for p in relay_ports], ("127.0.0.1", replay_port)))
    work = (varnish_dir / "work").resolve()
    supervisor.start(f"{prefix}varnish", cache_port, edge.command(
        work, f"127.0.0.1:{cache_port}", varnish_dir.resolve(), extra_params=CACHE_PARAMS))
    certificates = edge_tls.ensure(directory / "tls") if https_port else None
    haproxy_dir = directory / f"{prefix}haproxy"
    haproxy_dir.mkdir(exist_ok=True)
    admin = _admin_socket(haproxy_dir)
    listen = edge_haproxy.Listen(
        http=f"127.0.0.1:{http_port}", cache=f"127.0.0.1:{cache_port}",
        stats=f"127.0.0.1:{stats_port}", admin_socket=admin,
        https=f"127.0.0.1:{https_port}" if https_port else None,
        cert=certificates.edge.resolve() if certificates else None)
    config = edge_haproxy.write(haproxy_dir, [("127.0.0.1", p) for p in relay_ports], listen)
    check(config)
    supervisor.start(f"{prefix}edge", http_port, edge_haproxy.command(config.resolve()))
    return EdgeTier(http_port, https_port, cache_port, stats_port, admin, work,
                    certificates.ca.resolve() if certificates else None)


def banner(tier: EdgeTier) -> str:
    """The stack banner's lines about the edge, after its first."""
    lines = []
    if tier.https:
        lines.append(f"  edge (TLS)   https://127.0.0.1:{tier.https}   HTTP/2 for browsers; "
                     f"CA {tier.ca} (curl --cacert)")
    lines.append(f"  edge cache   http://127.0.0.1:{tier.cache}   (varnishd, behind HAProxy)")
    lines.append(f"  edge stats   http://127.0.0.1:{tier.stats}/stats  /metrics "
                 f"(HAProxy; socket {tier.admin_socket})")
    return "\n".join(lines)
