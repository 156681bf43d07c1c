"""``ssedge load``: one Locust scenario, headless, against any base URL, judged by objectives.

Locust runs as its own process: importing it monkey-patches everything with gevent, which
must never reach the relay's asyncio code. Nothing of ``loadtests`` is imported here: its
place is found without running it, and the scenario table is read as data.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from relay.duration import seconds
from relay.web import client_settings


@dataclass(frozen=True)
class Scenario:
    summary: str
    user_classes: tuple[str, ...]
    options: dict[str, str]


def _loadtests() -> Path:
    """The ``loadtests`` package's folder (in the checkout or installed), found, not imported."""
    spec = importlib.util.find_spec("loadtests")
    if spec is None or spec.origin is None:
        raise SystemExit("ssedge load: the loadtests package is not installed")
    return Path(spec.origin).parent


def _scenarios() -> dict[str, Scenario]:
    with open(_loadtests() / "scenarios.toml", "rb") as f:
        table = tomllib.load(f)
    return {name: Scenario(row["summary"], tuple(row["user_classes"]),
                           dict(row.get("options", {}))) for name, row in table.items()}


SCENARIOS = _scenarios()
LOCUSTFILE = _loadtests() / "locustfile.py"
SHAPES = ("ramp", "step", "soak")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", choices=sorted(SCENARIOS), help="what to run")
    p.add_argument("--host", default="http://127.0.0.1:8080",
                   help="base URL of the deployment (default the local stack's edge; its TLS "
                        "listener is https://127.0.0.1:8443)")
    p.add_argument("--ca",
                   help="CA certificate file an https:// host's certificate is checked against "
                        "[SSEDGE_CA_FILE; for https://127.0.0.1 the local stack's "
                        ".ssedge/tls/ca.pem; else the system's CAs]")
    p.add_argument("--users", type=int, default=100, help="concurrent users (default 100)")
    p.add_argument("--spawn-rate", type=float, default=50, help="users started per second")
    p.add_argument("--duration", default="60s", help="run time, e.g. 60s, 5m (default 60s)")
    p.add_argument("--results", default=".ssedge/load",
                   help="directory for the CSV, HTML and summary files (default .ssedge/load)")
    p.add_argument("--token", help="publish token [SSEDGE_PUBLISH_TOKEN, .ssedge/publish-token]")
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds at the end with no publishing, for the last events to arrive "
                        "and the tail-loss check (default 5)")
    p.add_argument("--max-p99-ms", type=float, default=500.0,
                   help="objective: p99 publish-to-receive latency (default 500)")
    p.add_argument("--max-lost", type=int, default=0, help="objective: lost events (default 0)")
    p.add_argument("--max-error-ratio", type=float, default=0.01,
                   help="objective: failed requests / requests (default 0.01)")
    p.add_argument("--min-hit-ratio", type=float, default=0.9,
                   help="objective for edge-cache: X-Cache hit ratio (default 0.9)")
    p.add_argument("--max-connect-p99-ms", type=float, default=1000.0,
                   help="objective: p99 time to connect a stream (its response head), "
                        "reconnects included (default 1000)")
    p.add_argument("--shape", choices=SHAPES,
                   help="a load shape instead of a flat --users (loadtests/shapes.py): ramp "
                        "up to --users, steps up to it, or a soak at it with the statistics "
                        "reset once every user is there")
    p.add_argument("--subscribe-token",
                   help="private-topic: a subscriber token for private-* [SSEDGE_SUBSCRIBE_TOKEN; "
                        "else minted with SSEDGE_JWT_SECRET]")
    p.add_argument("--stats-topic", default="ssedge.stats",
                   help="where ssedge stats publishes its snapshots: the relays' and the "
                        "edge's numbers during the run go beside Locust's (default ssedge.stats)")
    p.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE",
                   help="a scenario knob, e.g. rate=50, payload=512, topics=100, "
                        "storm-every=10, retry-ms=500 (see loadtests/locustfile.py)")
    p.add_argument("--expect-workers", type=int, default=0,
                   help="run as a distributed master waiting for this many workers")
    p.add_argument("--worker", metavar="MASTER_HOST",
                   help="run as a worker of the master on this host")
    p.add_argument("--web", action="store_true",
                   help="open Locust's web UI (127.0.0.1:8089) instead of a headless run")


def command(args: argparse.Namespace) -> list[str]:
    """The Locust command line for ``args``."""
    scenario = SCENARIOS[args.scenario]
    files = str(LOCUSTFILE)
    if args.shape:
        files += "," + str(LOCUSTFILE.with_name(f"shape_{args.shape}.py"))
    base = [sys.executable, "-m", "locust", "-f", files]
    if args.worker:
        return [*base, "--worker", "--master-host", args.worker]
    knobs = dict(scenario.options)
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set wants KNOB=VALUE, not {item!r}")
        knobs[name.strip().removeprefix("ssedge-")] = value.strip()
    duration = seconds(args.duration)
    if args.settle >= duration:
        raise ValueError(f"--settle {args.settle:g}s must be shorter than --duration")
    results = Path(args.results)
    knobs.update({
        "scenario": args.scenario,
        "max-p99-ms": str(args.max_p99_ms), "max-lost": str(args.max_lost),
        "max-error-ratio": str(args.max_error_ratio), "min-hit-ratio": str(args.min_hit_ratio),
        "max-connect-p99-ms": str(args.max_connect_p99_ms),
        "summary": str(results / f"{args.scenario}-summary.json"),
    })
    cmd = [*base, "--host", args.host.rstrip("/"), "-u", str(args.users),
           "-r", str(args.spawn_rate)]
    if args.web:
        cmd += ["--web-host", "127.0.0.1"]
    else:
        knobs["publish-for"] = f"{duration - args.settle:g}"
        cmd += ["--headless", "-t", args.duration, "--stop-timeout", "0",
                "--csv", str(results / args.scenario), "--html",
                str(results / f"{args.scenario}.html"), "--only-summary"]
    if args.expect_workers:
        cmd += ["--master", "--expect-workers", str(args.expect_workers)]
    for name, value in knobs.items():
        cmd += [f"--ssedge-{name}", value]
    return [*cmd, *scenario.user_classes]


def run(args: argparse.Namespace) -> int:
    try:
        cmd = command(args)
    except ValueError as exc:
        print(f"ssedge load: {exc}", file=sys.stderr)
        return 2
    if importlib.util.find_spec("locust") is None:
        print("ssedge load: Locust is not installed (pip install 'ssedge[load]')",
              file=sys.stderr)
        return 2
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    summary = results / f"{args.scenario}-summary.json"
    summary.unlink(missing_ok=True)
    # Tokens travel in the environment, not argv, where `ps` would show them.
    env = {**os.environ, "SSEDGE_PUBLISH_TOKEN": client_settings.publish_token(args.token)}
    ca = client_settings.ca_file(args.ca, args.host)
    if ca:
        # Locust's clients, and this process's own reads of the stats topic through the edge
        env["SSEDGE_CA_FILE"] = os.environ["SSEDGE_CA_FILE"] = ca
    if "PrivateReader" in SCENARIOS[args.scenario].user_classes:
        try:
            env["SSEDGE_SUBSCRIBE_TOKEN"] = subscribe_token(args.subscribe_token,
                                                            seconds(args.duration))
        except ValueError as exc:
            print(f"ssedge load: {exc}", file=sys.stderr)
            return 2
    started = time.time()
    locust = subprocess.Popen(cmd, env=env)
    try:
        code = locust.wait()
    except KeyboardInterrupt:
        # Locust's web mode does not stop on SIGINT; SIGTERM makes it write its reports
        locust.terminate()
        code = locust.wait()
    if args.worker or args.web:
        return code
    if not summary.is_file():
        print(f"ssedge load: Locust exited with {code} and wrote no summary", file=sys.stderr)
        return code or 2
    figures = json.loads(summary.read_text())
    line = figures["line"]
    # the relays' and the edge's own numbers over the same span, beside Locust's
    from relay.cli import load_server
    server, snaps = load_server.capture(args.host.rstrip("/"), args.stats_topic, started,
                                        time.time(), stats_token(args.subscribe_token))
    figures["server"] = server
    summary.write_text(json.dumps(figures, indent=2) + "\n")
    (results / f"{args.scenario}-server.json").write_text(
        json.dumps({"summary": server, "snapshots": snaps}) + "\n")
    server_line = load_server.line(server)
    (results / f"{args.scenario}-summary.txt").write_text(line + "\n" + server_line + "\n")
    print(line)
    print(server_line)
    print(f"reports: {results}/{args.scenario}.html, {results}/{args.scenario}_stats.csv, "
          f"{results}/{args.scenario}-server.json")
    return code


def stats_token(explicit: str | None) -> str | None:
    """A token for the stats topic (ssedge.* topics are private at the edge): one minted with
    SSEDGE_JWT_SECRET, else --subscribe-token or SSEDGE_SUBSCRIBE_TOKEN, else none."""
    if os.environ.get("SSEDGE_JWT_SECRET"):
        return subscribe_token(None, 0, ("ssedge.*",), mint=True)
    return client_settings.subscribe_token(explicit)


def subscribe_token(explicit: str | None, duration_s: float,
                    patterns: tuple[str, ...] = ("private-*",), mint: bool = False) -> str:
    """--subscribe-token, else SSEDGE_SUBSCRIBE_TOKEN, else (or with ``mint``) one minted for
    ``patterns`` with SSEDGE_JWT_SECRET (the local stack's, from .ssedge/env), valid for the
    run and an hour."""
    given = None if mint else client_settings.subscribe_token(explicit)
    if given:
        return given
    secret = os.environ.get("SSEDGE_JWT_SECRET")
    if not secret:
        raise ValueError("private-topic needs a subscriber token: --subscribe-token, "
                         "SSEDGE_SUBSCRIBE_TOKEN, or SSEDGE_JWT_SECRET to mint one")
    import jwt

    now = int(time.time())
    claims = {"ssedge": {"subscribe": list(patterns), "publish": []}, "iat": now,
              "exp": now + int(duration_s) + 3600}
    for name, claim in (("SSEDGE_JWT_AUDIENCE", "aud"), ("SSEDGE_JWT_ISSUER", "iss")):
        if os.environ.get(name):
            claims[claim] = os.environ[name]
    return jwt.encode(claims, secret, algorithm="HS256")
