"""The ``ssedge`` command: run a relay node or the local stack, publish, tail."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

from relay import __version__
from relay import settings as settings_mod
from relay.cli import flags
from relay.web import client_settings
from relay.web.client_settings import DEFAULT_URL

STACK_DIR = Path(".ssedge")


# where the streams are: one Redis (and a replica of it) or a cluster's seeds, taken from one
# place, never mixed
_REDIS_LOCATION = ("SSEDGE_REDIS_URL", "SSEDGE_REDIS_CLUSTER", "SSEDGE_REDIS_READ_URL")


def read_stack_env(directory: Path = STACK_DIR) -> None:
    """Take the local stack's settings from ``.ssedge/env``; real variables win. A Redis named
    in the real environment (a test's, say) is not joined by the stack's cluster or URL."""
    env_file = directory / "env"
    if not env_file.is_file():
        return
    own_redis = any(name in os.environ for name in _REDIS_LOCATION)
    for line in env_file.read_text().splitlines():
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not name.startswith(settings_mod.PREFIX):
            continue
        if own_redis and name in _REDIS_LOCATION:
            continue
        os.environ.setdefault(name, value.strip())


class _Parser(argparse.ArgumentParser):
    """argparse's own, but a mistake is one line (the usage is a --help away), exit 2, like
    a bad setting."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def cmd_relay(args: argparse.Namespace) -> int:
    from relay.node import server
    settings = flags.load(args, "relay")
    _check_auth(settings)
    server.run(settings)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from relay.node import server
    settings = flags.load(args, "replay")
    _check_auth(settings)
    server.run(settings, "replay.app:create_app", host=settings.replay_host,
               port=settings.replay_port)
    return 0


def _check_auth(settings: settings_mod.Settings) -> None:
    """Keys and algorithms are loaded once here, so that a bad one stops the command with one
    line (exit 2) instead of failing in every worker."""
    from relay.web import auth
    auth.Authority(settings)


def cmd_token(args: argparse.Namespace) -> int:
    """Mint a token, for tests and operators: HMAC with SSEDGE_JWT_SECRET, or --key PEM."""
    import time

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from relay.web import auth, keys
    settings = settings_mod.load()
    key: Any
    if args.key:
        try:
            key = load_pem_private_key(Path(args.key).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            print(f"ssedge token: cannot use {args.key} as a private key: {exc}", file=sys.stderr)
            return 2
        if isinstance(key, rsa.RSAPrivateKey):
            alg = args.alg or "RS256"
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            alg = args.alg or keys.EC_ALGORITHMS.get(key.curve.name, "ES256")
        else:
            print("ssedge token: an RSA or EC private key is needed", file=sys.stderr)
            return 2
    elif settings.jwt_secret:
        key, alg = settings.jwt_secret, args.alg or "HS256"
    else:
        print("ssedge token: set SSEDGE_JWT_SECRET or give --key PRIVATE_KEY.pem",
              file=sys.stderr)
        return 2
    claims: dict[str, Any] = {
        auth.CLAIM: {"subscribe": args.subscribe or [], "publish": args.publish or []},
        "iat": int(time.time()),
        "exp": int(time.time()) + args.ttl,
    }
    if args.subject:
        claims["sub"] = args.subject
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    # a JWKS key is chosen by the token's kid (relay/web/jwks.py)
    headers = {"kid": args.kid} if args.kid else None
    print(jwt.encode(claims, key, algorithm=alg, headers=headers))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from relay.ingest import config as ingest_config
    from relay.ingest import process as ingest
    settings = flags.load(args, "ingest")
    topics = []
    if settings.ingest_file:
        topics += ingest_config.load_file(Path(settings.ingest_file))
    if args.topic or args.sources:
        if not args.topic:
            raise settings_mod.SettingsError("--from needs --topic")
        topics.append(ingest_config.topic(
            args.topic, [ingest_config.parse_from(u) for u in args.sources or []],
            args.envelope))
    if not topics:
        raise settings_mod.SettingsError(
            "nothing to ingest: give --topic T --from URL, or SSEDGE_INGEST_FILE")
    return ingest.run(settings, ingest_config.merge(topics))


def cmd_demo_upstream(args: argparse.Namespace) -> int:
    from relay.devstack import demo as demo_upstream
    return demo_upstream.run(args.host, args.port, interval=args.interval,
                             drop_every=args.drop_every)


def cmd_settings(args: argparse.Namespace) -> int:
    print("| variable | default | meaning |\n|---|---|---|")
    for name, default, doc in settings_mod.fields():
        shown = f"`{default}`" if default != "" else "(empty)"
        print(f"| `{settings_mod.env_name(name)}` | {shown} | {doc} |")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from relay.web import client
    # no token file here: a publish without a token is one the caller chose
    token = client_settings.publish_token(args.token, stack=False)
    data: Any = json.loads(args.data) if args.json else args.data
    event: dict[str, Any] = {"data": data}
    if args.event:
        event["event"] = args.event
    url = f"{client_settings.base_url(args.url)}/v1/streams/{args.topic}/events"
    try:
        response, key = asyncio.run(client.publish(url, event, token=token, key=args.key,
                                                   attempts=max(1, args.attempts)))
    except (OSError, EOFError, client.ProtocolError) as exc:
        print(f"ssedge publish: {url}: {exc or type(exc).__name__} (may or may not be "
              "published: send it again with --key of the same value)", file=sys.stderr)
        return 1
    if response.status != 201:
        print(f"ssedge publish: {response.status} {response.body.decode(errors='replace')} "
              f"(Idempotency-Key {key})", file=sys.stderr)
        return 1
    print(response.json()["id"])
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_tail(args))
    except KeyboardInterrupt:
        return 0


async def _tail(args: argparse.Namespace) -> int:
    from relay.protocol.wire import Event
    from relay.web import client

    query = []
    if args.since:
        query.append(f"since={args.since}")
    if args.backfill:
        query.append(f"backfill={args.backfill}")
    url = f"{client_settings.base_url(args.url)}/v1/streams/{args.topic}/events"
    if query:
        url += "?" + "&".join(query)
    last_id = args.last_event_id or ""
    retry_ms = 1000
    seen = 0
    while True:
        try:
            headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
            es = await client.stream(url, last_event_id=last_id, headers=headers)
            if es.response.status != 200:
                answer = es.response.body.decode(errors="replace")
                print(f"ssedge tail: {es.response.status} {answer}", file=sys.stderr)
                if es.response.status < 500:
                    return 1
            else:
                async for item in es:
                    if not isinstance(item, Event):
                        continue
                    last_id = item.id or last_id
                    if args.json:
                        print(json.dumps({"id": item.id, "event": item.event, "data": item.data}),
                              flush=True)
                    else:
                        print(f"{item.id}\t{item.event}\t{item.data}", flush=True)
                    seen += 1
                    if args.count and seen >= args.count:
                        es.close()
                        return 0
                retry_ms = es.decoder.retry if es.decoder.retry is not None else retry_ms
                es.close()
        except BrokenPipeError:
            raise  # our reader left (`| head`), not the relay: ``main`` ends quietly
        except (OSError, asyncio.IncompleteReadError) as exc:
            print(f"ssedge tail: {exc}; reconnecting", file=sys.stderr)
        await asyncio.sleep(retry_ms / 1000)


def cmd_up(args: argparse.Namespace) -> int:
    from relay.devstack import single as stack
    from relay.devstack.supervisor import RestartPolicy

    for flag in ("restart_burst", "restart_window", "backoff_max"):
        if getattr(args, flag) <= 0:
            print(f"ssedge up: --{flag.replace('_', '-')} must be above 0", file=sys.stderr)
            return 2
    if args.cluster and args.regions:
        print("ssedge up: --cluster and --regions cannot go together (a cluster's replicas "
              "are not read by region)", file=sys.stderr)
        return 2
    policy = RestartPolicy(burst=args.restart_burst, window_s=args.restart_window,
                           max_delay_s=args.backoff_max,
                           first_delay_s=min(RestartPolicy().first_delay_s, args.backoff_max))
    if args.cluster:
        from relay.devstack import cluster as cluster_stack
        return cluster_stack.run(Path(args.dir), replay_port=args.replay_port,
                                 edge_port=args.edge_port, tls_port=args.tls_port,
                                 relay_ports=args.relay_port or cluster_stack.RELAY_PORTS,
                                 policy=policy)
    relay_ports = tuple(args.relay_port) if args.relay_port else stack.RELAY_PORTS
    region_b = None
    if args.regions:
        from relay.devstack.regions import RegionB
        region_b = RegionB(args.b_redis_port, tuple(args.b_relay_port or (9101, 9102)),
                           args.b_replay_port, args.b_edge_port, args.b_tls_port)
    return stack.run(Path(args.dir), args.redis_port, relay_ports, args.replay_port,
                     args.edge_port, args.upstream_port, args.ingest_port, policy,
                     fsync=args.fsync, tls_port=args.tls_port, region_b=region_b)


def cmd_stats(args: argparse.Namespace) -> int:
    from relay.dashboard import collector
    settings = flags.load(args, "stats")
    return collector.run(collector.Options(
        relays=tuple(u.rstrip("/") for u in args.relay or ["http://127.0.0.1:8101"]),
        redis_url=settings.redis_url, redis_cluster=settings.redis_cluster,
        varnish_name=args.varnish_name, haproxy_socket=args.haproxy_socket,
        interval_s=args.interval, topic=args.topic, keep=args.keep,
        supervisor=args.supervisor, audience_period_s=settings.audience_period_s,
        log_level=settings.log_level, log_format=settings.log_format,
    ))


def cmd_load(args: argparse.Namespace) -> int:
    from relay.cli import load
    return load.run(args)


def cmd_drill(args: argparse.Namespace) -> int:
    from relay.drill import run as drill
    return drill.run(args)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ssedge", description=__doc__)
    p.add_argument("--version", action="version", version=f"ssedge {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    relay = sub.add_parser("relay", help="run one relay node on Granian")
    flags.add(relay, "relay")
    relay.set_defaults(func=cmd_relay)

    replay = sub.add_parser("replay", help="run the replay service on Granian")
    flags.add(replay, "replay")
    replay.set_defaults(func=cmd_replay)

    ing = sub.add_parser("ingest", help="follow upstream SSE servers into topics")
    ing.add_argument("--topic", help="the topic the upstreams' events go to")
    ing.add_argument("--from", dest="sources", action="append", metavar="[NAME=]URL",
                     help="an upstream event stream; repeat for more (NAME defaults to the "
                          "URL's host:port/path)")
    ing.add_argument("--envelope", action="store_true",
                     help="store each event's data as JSON naming its upstream and id")
    flags.add(ing, "ingest")
    ing.set_defaults(func=cmd_ingest)

    demo = sub.add_parser("demo-upstream", help="a demo upstream SSE server (for ingest)")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8401)
    demo.add_argument("--interval", type=float, default=1.0, help="seconds between events")
    demo.add_argument("--drop-every", type=int, default=0,
                      help="end each connection after about N events (0: never)")
    demo.set_defaults(func=cmd_demo_upstream)

    up = sub.add_parser("up", help="run the local stack in the foreground (Ctrl-C stops it)")
    up.add_argument("--dir", default=str(STACK_DIR), help="state directory (default .ssedge)")
    up.add_argument("--redis-port", type=int, default=6390, help="redis-server port (6390)")
    up.add_argument("--replay-port", type=int, default=8201, help="replay service port (8201)")
    up.add_argument("--edge-port", type=int, default=8080, help="the edge's HTTP port (8080)")
    up.add_argument("--tls-port", type=int, default=8443,
                    help="the edge's TLS port, HTTP/2 for browsers (8443; 0: none)")
    up.add_argument("--upstream-port", type=int, default=8401,
                    help="demo upstream SSE server port (8401)")
    up.add_argument("--ingest-port", type=int, default=8301,
                    help="port of the demo ingest's /metrics (8301)")
    up.add_argument("--relay-port", type=int, action="append",
                    help="a relay node's port; repeat for more (8101 and 8102)")
    up.add_argument("--restart-burst", type=int, default=5,
                    help="a child that exits again after this many restarts within "
                         "--restart-window is a crash loop: the stack stops, exit 1 (5)")
    up.add_argument("--restart-window", type=float, default=60.0,
                    help="seconds over which restarts count towards --restart-burst (60)")
    up.add_argument("--backoff-max", type=float, default=10.0,
                    help="longest wait before restarting a child; waits double from 0.5 s (10)")
    up.add_argument("--fsync", choices=("everysec", "always"), default="everysec",
                    help="Redis's appendfsync: everysec (a machine crash may lose the last "
                         "second of acknowledged events) or always (none; slower publishes; "
                         "docs/RELIABILITY.md)")
    up.add_argument("--cluster", action="store_true",
                    help="a local 3-primary Redis Cluster (ports 7001-7006) and three relays "
                         "(8101-8103) instead of one redis-server and two relays")
    up.add_argument("--regions", action="store_true",
                    help="a second region beside the stack: a replica of its Redis, two "
                         "relays reading it, a replay service and an edge (docs/SCALING.md)")
    up.add_argument("--b-redis-port", type=int, default=6391,
                    help="with --regions: the replica's port (6391)")
    up.add_argument("--b-relay-port", type=int, action="append",
                    help="with --regions: a region B relay's port; repeat (9101 and 9102)")
    up.add_argument("--b-replay-port", type=int, default=9201,
                    help="with --regions: region B's replay service port (9201)")
    up.add_argument("--b-edge-port", type=int, default=9080,
                    help="with --regions: region B's edge port (9080)")
    up.add_argument("--b-tls-port", type=int, default=9443,
                    help="with --regions: region B's edge TLS port (9443)")
    up.set_defaults(func=cmd_up)

    pub = sub.add_parser("publish", help="publish one event")
    pub.add_argument("topic")
    pub.add_argument("data", help="the event's data (a string, or JSON with --json)")
    pub.add_argument("--event", help="event type")
    pub.add_argument("--json", action="store_true", help="DATA is JSON, sent as its value")
    pub.add_argument("--url", help=f"relay or edge base URL [SSEDGE_URL, default {DEFAULT_URL}]")
    pub.add_argument("--token", help="publish token [SSEDGE_PUBLISH_TOKEN]")
    pub.add_argument("--key", help="Idempotency-Key (default: a new UUID); the same key "
                     "within SSEDGE_IDEMPOTENCY_TTL_S publishes once")
    pub.add_argument("--attempts", type=int, default=5,
                     help="tries, with the same key, after a 503, a timeout or a lost "
                          "connection (5)")
    pub.set_defaults(func=cmd_publish)

    tail = sub.add_parser("tail", help="print a topic's events as they come; resumes by id")
    tail.add_argument("topic")
    tail.add_argument("--url", help=f"relay or edge base URL [SSEDGE_URL, default {DEFAULT_URL}]")
    tail.add_argument("--last-event-id", help="start after this id")
    tail.add_argument("--since", choices=["now", "earliest"])
    tail.add_argument("--backfill", type=int, default=0, help="start with the last N events")
    tail.add_argument("--count", type=int, default=0, help="stop after N events")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument("--token", help="a subscriber token, for a private topic")
    tail.set_defaults(func=cmd_tail)

    tok = sub.add_parser("token", help="mint a JWT (HMAC with SSEDGE_JWT_SECRET, or --key)")
    tok.add_argument("--subscribe", action="append", metavar="PATTERN",
                     help="a topic pattern it may read; repeat for more")
    tok.add_argument("--publish", action="append", metavar="PATTERN",
                     help="a topic pattern it may publish to; repeat for more")
    tok.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (3600)")
    tok.add_argument("--key", help="PEM private key (RSA or EC) to sign with instead")
    tok.add_argument("--alg", help="signature algorithm (default HS256, RS256 or the curve's ES)")
    tok.add_argument("--subject", help="the sub claim (who it is for)")
    tok.add_argument("--kid", help="key id in the header: the JWKS key it is signed with")
    tok.set_defaults(func=cmd_token)

    sta = sub.add_parser("stats", help="publish the dashboard's snapshots of relays and edge")
    sta.add_argument("--relay", action="append", metavar="URL",
                     help="a relay node's base URL; repeat for every node (http://127.0.0.1:8101)")
    sta.add_argument("--varnish-name", metavar="DIR",
                     help="varnishd's working directory (-n), for the edge's hit ratios")
    sta.add_argument("--haproxy-socket", metavar="PATH",
                     help="the edge proxy's runtime API socket, for its streams per relay")
    sta.add_argument("--interval", type=float, default=1.0, help="seconds between snapshots (1)")
    sta.add_argument("--topic", default="ssedge.stats", help="topic of the snapshots")
    sta.add_argument("--keep", type=int, default=3600, help="snapshots kept in Redis (3600)")
    sta.add_argument("--supervisor", metavar="FILE",
                     help="ssedge up's supervisor.json: each child's state and restarts go "
                          "into the snapshots")
    flags.add(sta, "stats")
    sta.set_defaults(func=cmd_stats)

    load_p = sub.add_parser("load", help="run a Locust scenario and judge it by its objectives")
    from relay.cli.load import add_arguments

    add_arguments(load_p)
    load_p.set_defaults(func=cmd_load)

    drill_p = sub.add_parser(
        "drill", help="inject faults on a schedule while readers and a publisher run; report "
                      "lost, duplicate and out-of-order events per fault",
        description="A fault drill: readers follow the drill's topics through the edge, a "
                    "publisher posts numbered events, faults are injected on a schedule "
                    "(on the local stack's processes, or by --hook commands), and each "
                    "fault's losses, duplicates, resets, reconnects and stalls are reported.")
    from relay.drill.run import add_arguments as add_drill_arguments

    add_drill_arguments(drill_p)
    drill_p.set_defaults(func=cmd_drill)

    from relay.cli.admin import add_arguments as add_admin_arguments

    add_admin_arguments(sub)  # top, revoke, disconnect, drain: the operator API

    st = sub.add_parser("settings", help="print the settings table (Markdown)")
    st.set_defaults(func=cmd_settings)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.func is not cmd_up:
        # `ssedge up` writes that file for the stack it starts: the settings of the previous
        # one (say, a cluster's seed nodes after `up --cluster`) must not reach its children
        read_stack_env()
    try:
        return int(args.func(args))
    except settings_mod.SettingsError as exc:
        print(f"ssedge: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # whoever read our output left (`ssedge tail demo | head`): done, and quietly (the
        # interpreter would complain again flushing stdout at exit)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a port in use, a directory it may not write: said in one line
        print(f"ssedge {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
