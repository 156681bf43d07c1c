"""``ssedge up --cluster``: a local Redis Cluster (``relay.harness.cluster.LocalCluster``) on
ports 7001-7006 under ``.ssedge/cluster``, with the replay service, three relay nodes and the
edge (HAProxy on :8080 and :8443, varnishd behind it)."""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from relay.devstack.supervisor import RestartPolicy
from relay.harness.cluster import LocalCluster

CLUSTER_PORTS = (7001, 7002, 7003, 7004, 7005, 7006)
RELAY_PORTS = (8101, 8102, 8103)


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
        # the operator API on the relays' own ports (ssedge top, revoke, disconnect, drain)
        "SSEDGE_ADMIN_TOKEN": secret(directory, "admin-token", 24),
        "SSEDGE_ADMIN_URL": f"http://127.0.0.1:{relay_ports[0]}",
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
