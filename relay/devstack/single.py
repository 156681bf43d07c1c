"""``ssedge up``: the local stack in the foreground, supervised, stopped as a whole by Ctrl-C.

Its own redis-server (AOF on, data under ``.ssedge/redis``), the replay service, two relay
nodes, the edge in front of them (HAProxy on :8080 and, TLS with HTTP/2, :8443; varnishd
behind it for the cacheable answers: ``relay.devstack.edge``), a demo publisher, and a demo
upstream SSE server with an ``ssedge ingest`` of it into the ``ingest-demo`` topic. The
publish token and the stack's settings are written under ``.ssedge/`` so that ``ssedge``
commands run in the checkout find them. A child that exits is restarted on its port
(``relay.supervisor``); one in a crash loop stops the stack, exit 1.
"""

from __future__ import annotations

import secrets
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from relay.devstack import demo
from relay.devstack import edge as edge_stack
from relay.devstack.demo import DEMO_TOPIC
from relay.devstack.regions import RegionB
from relay.devstack.supervisor import RestartPolicy, Supervisor
from relay.harness.processes import port_open

REDIS_PORT = 6390
RELAY_PORTS = (8101, 8102)
REPLAY_PORT = 8201
EDGE_PORT = 8080
TLS_PORT = 8443
UPSTREAM_PORT = 8401
INGEST_PORT = 8301
INGEST_TOPIC = "ingest-demo"


def secret(directory: Path, name: str = "publish-token", size: int = 24) -> str:
    """A secret the stack keeps across runs (``.ssedge/<name>``, mode 600), made once."""
    path = directory / name
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    token = secrets.token_urlsafe(size)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


def operator_token(jwt_secret: str, days: int = 30) -> str:
    """A subscriber token for the ssedge.* topics (the dashboard's page reads them with it),
    signed with the stack's JWT secret."""
    import jwt

    now = int(time.time())
    return jwt.encode({"ssedge": {"subscribe": ["ssedge.*"], "publish": []}, "iat": now,
                       "exp": now + days * 86400}, jwt_secret, algorithm="HS256")


def ports_free(ports: Sequence[int]) -> bool:
    """False, having said which, when one of ``ports`` is taken."""
    for port in ports:
        if port_open(port):
            print(f"ssedge up: port {port} is in use (is another stack running?)",
                  file=sys.stderr)
            return False
    return True


class Processes(Supervisor):
    """A stack's children, each in a process group of its own (Ctrl-C reaches the stack, which
    then stops each child in order), supervised (``relay.devstack.supervisor``), logs under the
    stack's directory."""

    def edge_tier(self, relay_ports: Sequence[int], replay_port: int, edge_port: int,
                  tls_port: int = TLS_PORT, *, region: str = "",
                  env: dict[str, str] | None = None) -> edge_stack.EdgeTier:
        """The replay service, the relays, the edge in front of them (HAProxy on the edge's
        ports, varnishd behind it: ``relay.devstack.edge``), and the dashboard's collector of
        every relay's and the edge's numbers (topic ssedge.stats).

        ``region`` names a second tier beside the first (``devstack.regions``): its children
        are ``<region>-relay-1``, …, its collector publishes to ``ssedge.stats.<region>``, and
        ``env`` holds its own settings (the replica it reads, its replay service)."""
        prefix = f"{region}-" if region else ""
        self.start(f"{prefix}replay", replay_port, [sys.executable, "-m", "relay", "replay"],
                   env)
        for i, port in enumerate(relay_ports, 1):
            self.start(f"{prefix}relay-{i}", port, [
                sys.executable, "-m", "relay", "relay", "--port", str(port),
                "--node-name", f"{prefix}relay-{i}"], env)
        tier = edge_stack.start(self, relay_ports, replay_port, edge_port, tls_port,
                                prefix=prefix)
        self.start(f"{prefix}stats", 0, [
            sys.executable, "-m", "relay", "stats",
            *(a for p in relay_ports for a in ("--relay", f"http://127.0.0.1:{p}")),
            "--varnish-name", str(tier.varnish_workdir),
            # the reading socket (level operator): the collector needs no more
            "--haproxy-socket", str(tier.stats_socket),
            "--supervisor", str(self.status_path.resolve()),
            *(["--topic", f"ssedge.stats.{region}"] if region else [])], env)
        return tier


def run(directory: Path, redis_port: int = REDIS_PORT,
        relay_ports: tuple[int, ...] = RELAY_PORTS, replay_port: int = REPLAY_PORT,
        edge_port: int = EDGE_PORT, upstream_port: int = UPSTREAM_PORT,
        ingest_port: int = INGEST_PORT, policy: RestartPolicy | None = None,
        fsync: str = "everysec", tls_port: int = TLS_PORT,
        region_b: RegionB | None = None) -> int:
    """The stack; with ``region_b``, a second region reading a replica (``--regions``)."""
    from relay.edge.haproxy import config as edge_haproxy
    from relay.edge.varnish import config as edge

    redis_server = shutil.which("redis-server")
    for program, package in ((redis_server, "redis-server"), (edge.varnishd(), "varnish"),
                             (edge_haproxy.haproxy(), "haproxy")):
        if program is None:
            print(f"ssedge up: {package} is not installed (apt-get install {package})",
                  file=sys.stderr)
            return 1
    assert redis_server is not None
    if not ports_free((redis_port, replay_port, edge_port, upstream_port, ingest_port,
                       *relay_ports, *([tls_port] if tls_port else []),
                       *(region_b.ports if region_b else ()))):
        return 1
    directory.mkdir(exist_ok=True)
    (directory / "redis").mkdir(exist_ok=True)
    token = secret(directory)
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
        # private-* topics need a token: `ssedge token --subscribe 'private-*'` mints one; so
        # do the ssedge.* topics (the dashboard's snapshots: internal addresses, errors,
        # PIDs): the banner's dashboard address carries a token for them
        "SSEDGE_PRIVATE_TOPICS": "private-*,ssedge.*",
        "SSEDGE_JWT_SECRET": secret(directory, "jwt-secret", 48),
        # the operator API on the relays' own ports (never through the edge): ssedge top,
        # revoke, disconnect, drain read these two
        "SSEDGE_ADMIN_TOKEN": secret(directory, "admin-token", 24),
        "SSEDGE_ADMIN_URL": f"http://127.0.0.1:{relay_ports[0]}",
        # another `ssedge ingest` in a second shell serves its metrics on a free port
        "SSEDGE_INGEST_PORT": "0",
        # Ctrl-C drains open streams before the relays stop: keep it short here
        "SSEDGE_DRAIN_S": "2",
        # the token cookie over the plain port too (http://127.0.0.1:8080); Secure elsewhere
        "SSEDGE_AUTH_COOKIE_SECURE": "false",
        # clients (ssedge tail, load) trust the stack's own CA for https://127.0.0.1:8443
        **({"SSEDGE_CA_FILE": str((directory / "tls" / "ca.pem").resolve())} if tls_port else {}),
    }
    dashboard = f"?access_token={operator_token(env['SSEDGE_JWT_SECRET'])}"
    (directory / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    children = Processes(directory, env, policy)
    start = children.start

    def up() -> str:
        start("redis", redis_port, [
            redis_server, "--port", str(redis_port), "--bind", "127.0.0.1",
            "--dir", str((directory / "redis").resolve()), "--appendonly", "yes",
            # everysec: a process crash loses nothing acknowledged, a machine crash up to a
            # second; always: neither (docs/RELIABILITY.md, make bench-durability)
            "--appendfsync", fsync, "--save", "", "--protected-mode", "no",
            # the keys the relays track (cold topics; every key on a cluster) stay in Redis's
            # table until written: bounded, the oldest are told as written and read again
            "--tracking-table-max-keys", "1000000",
            # a replica that must sync in full (restarted, or cut too long) starts at once,
            # not after Redis's 5 s wait for more replicas to share the transfer
            *(["--repl-diskless-sync-delay", "0"] if region_b else []),
        ])
        tier = children.edge_tier(relay_ports, replay_port, edge_port, tls_port)
        if region_b is not None:
            region_b.start(children, redis_server, redis_port, fsync)
        # an origin that drops its clients now and then: the ingest resumes it by id
        start("upstream", upstream_port, [sys.executable, "-m", "relay", "demo-upstream",
                                          "--port", str(upstream_port), "--drop-every", "30"])
        start("ingest", ingest_port, [
            sys.executable, "-m", "relay", "ingest", "--topic", INGEST_TOPIC,
            "--from", f"demo=http://127.0.0.1:{upstream_port}/events",
            "--ingest-port", str(ingest_port), "--node-name", "ingest-1",
        ])
        threading.Thread(target=demo.publish_ticks, args=(base_url, token, children.stop),
                         daemon=True).start()
        region_text = region_b.banner(dashboard.replace("?", "&")) if region_b else ""
        return f"""ssedge stack is up (logs in {directory}/):
  edge         {base_url}   <- the one address you need (HAProxy, HTTP/1.1)
{edge_stack.banner(tier)}
  demo topic   {base_url}/v1/streams/{DEMO_TOPIC}/events  (a tick every second)
  ingested     {base_url}/v1/streams/{INGEST_TOPIC}/events  (from the demo upstream)
  upstream     http://127.0.0.1:{upstream_port}/events  (a demo origin server)
  ingest       http://127.0.0.1:{ingest_port}/metrics
  relay nodes  {", ".join(f"http://127.0.0.1:{p}" for p in relay_ports)}
  replay       {replay_url}/v1/replay/{DEMO_TOPIC}?after=0-0
  redis        {redis_url}
  publish      token in {directory}/publish-token
  private-*    need a token: .venv/bin/ssedge token --subscribe 'private-*'
  pages        {base_url}/ (live feed)
  dashboard    {base_url}/dashboard{dashboard}  (operators; the token reads ssedge.*)
  try          .venv/bin/ssedge tail {DEMO_TOPIC}{region_text}
A child that exits is restarted (state in {directory}/supervisor.json).
Ctrl-C stops everything."""

    code = children.serve(up)
    print("ssedge stack stopped." if code == 0 else f"ssedge stack stopped (exit {code}).",
          flush=True)
    return code
