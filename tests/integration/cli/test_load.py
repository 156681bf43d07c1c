"""``ssedge load``: a short run of every Locust scenario against a real stack.

Redis, a replay service, two Granian relays, varnishd and the dashboard's collector
(``ssedge stats``), started once for the module; each scenario runs headless for a few
seconds and must meet its own objectives (nothing lost, no duplicates, p99 under the default
500 ms, time to connect, the edge's hit ratio), with the relays' and the edge's own numbers
beside Locust's. Two runs check that a missed objective fails the command; plain Locust runs
a scenario from its ``.conf``; a load shape moves the user count.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loadtests.scenarios import SCENARIOS
from relay.harness.edge import Edge
from relay.harness.processes import spawn, stop_group
from relay.harness.servers import RedisServer, Relay
from tests.integration.conftest import TOKEN

# private-* topics need a subscriber token, minted by ssedge load with this secret
JWT_SECRET = "load-test-secret-of-at-least-32-bytes!"
PRIVATE = {"jwt_secret": JWT_SECRET, "private_topics": "private-*"}


@dataclass
class Stack:
    edge: Edge
    relays: list[Relay]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("load-stack")
    redis = RedisServer(directory / "redis")
    started: list[Relay | Edge] = []
    collector = None
    try:
        replay = Relay(directory, redis, TOKEN, command="replay", **PRIVATE)
        started.append(replay)
        relays = [Relay(directory, redis, TOKEN, replay_url=replay.url, retry_ms=300,
                        **PRIVATE) for _ in range(2)]
        started.extend(relays)
        edge = Edge(directory / "edge", relays, replay)
        started.append(edge)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSEDGE_")}
        env["SSEDGE_REDIS_URL"] = redis.url
        collector = spawn([sys.executable, "-m", "relay", "stats", "--interval", "0.5",
                           *(a for r in relays for a in ("--relay", r.url)),
                           "--varnish-name", str(edge.workdir)], directory / "stats.log", env)
        yield Stack(edge, relays)
    finally:
        if collector is not None:
            stop_group(collector, signal.SIGTERM)
        for server in reversed(started):
            server.stop()
        redis.stop()


def run_load(host: str, scenario: str, results: Path, *extra: str,
             token: str = TOKEN) -> tuple[int, dict[str, Any], str]:
    env = {**os.environ, "SSEDGE_PUBLISH_TOKEN": token, "SSEDGE_JWT_SECRET": JWT_SECRET}
    cmd = [sys.executable, "-m", "relay", "load", scenario, "--host", host, "--users", "21",
           "--spawn-rate", "50", "--duration", "7s", "--settle", "2.5", "--results",
           str(results), "--set", "retry-ms=300", "--set", "storm-every=2",
           "--set", "burst-every=1.5", "--set", "burst-size=200", "--set", "churn-life=2",
           "--set", "churn-away=0.5", *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    summary_file = results / f"{scenario}-summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    return done.returncode, summary, done.stdout + done.stderr


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_scenario_meets_its_objectives_through_the_edge(
    stack: Stack, scenario: str, tmp_path: Path,
) -> None:
    code, summary, output = run_load(stack.edge.url, scenario, tmp_path)
    assert code == 0, output[-3000:]
    assert summary["passed"] and not summary["missed"]
    assert (tmp_path / f"{scenario}.html").stat().st_size > 0
    assert (tmp_path / f"{scenario}_stats.csv").read_text().count("\n") >= 2
    lines = (tmp_path / f"{scenario}-summary.txt").read_text().splitlines()
    assert lines[0].startswith(f"{scenario} PASS") and len(lines) == 2
    # the relays' and the edge's own numbers over the run, from the collector's snapshots
    server = summary["server"]
    assert server["snapshots"] >= 5 and len(server["nodes"]) == 2, server
    assert lines[1].startswith("server: ") and "streams peak" in lines[1]
    assert (tmp_path / f"{scenario}-server.json").is_file()
    if scenario == "edge-cache":
        assert summary["hit_ratio"] >= 0.9
        return
    assert summary["readers"] >= 19 and summary["published"] > 0
    assert summary["delivered"] > 0 and summary["connect_p99_ms"] is not None
    assert sum(n["streams_peak"] for n in server["nodes"].values()) >= 19
    assert summary["lost_total"] == summary["duplicates"] == summary["out_of_order"] == 0
    # every fast reader got the publishers' last events: the tail was checked, not skipped
    assert summary["unfinished"] == 0
    if scenario == "reconnect-storm":
        assert summary["replayed"] > 0, "storms dropped readers while events were published"
    if scenario == "churn":  # readers came and went: some visits ended, others began
        assert summary["left"] > 0 and summary["readers"] > 20


def test_readers_and_publishers_through_the_tls_edge(stack: Stack, tmp_path: Path) -> None:
    """Readers (gevent sockets wrapped in TLS), the publisher (FastHttpUser) and the stats
    read-back, all over https://, the certificate checked against the edge's CA (without it
    the certificate is refused: test_edge_haproxy)."""
    assert stack.edge.https_url is not None
    code, summary, output = run_load(stack.edge.https_url, "fanout", tmp_path,
                                     "--ca", str(stack.edge.ca))
    assert code == 0 and summary["passed"], output[-3000:]
    assert summary["readers"] >= 19 and summary["delivered"] > 0
    assert summary["lost_total"] == summary["failures"] == 0
    assert summary["server"]["snapshots"] >= 5


def test_a_missed_objective_fails_the_run(stack: Stack, tmp_path: Path) -> None:
    # a wrong token: nothing is published, every publish is a 401
    code, summary, output = run_load(stack.edge.url, "fanout", tmp_path, token="wrong")
    assert code == 1, output[-3000:]
    assert not summary["passed"]
    assert any("nothing was published" in m for m in summary["missed"])
    assert any("error ratio" in m for m in summary["missed"])
    assert "fanout FAIL" in (tmp_path / "fanout-summary.txt").read_text()


def test_edge_cache_against_a_relay_directly_says_there_is_no_edge(
    stack: Stack, tmp_path: Path,
) -> None:
    code, summary, _ = run_load(stack.relays[0].url, "edge-cache", tmp_path, "--users", "5")
    assert code == 1
    assert summary["missed"] == ["no X-Cache header: not behind the Varnish edge"]


def test_plain_locust_runs_one_scenario_from_its_conf(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py",
         "--config", "loadtests/fanout.conf", "--host", stack.edge.url, "--users", "11",
         "--run-time", "6s", "--ssedge-settle", "2", "--csv", str(out / "fanout"),
         "--html", str(out / "fanout.html"), "--ssedge-summary", str(out / "summary.json")],
        env={**os.environ, "SSEDGE_PUBLISH_TOKEN": TOKEN}, capture_output=True, text=True,
        timeout=60, cwd=Path(__file__).parents[3])
    summary = json.loads((out / "summary.json").read_text())
    assert done.returncode == 0 and summary["passed"], done.stdout[-2000:] + done.stderr[-2000:]
    # only the scenario's classes ran (by tag): 10 fan-out readers and the publisher
    assert summary["scenario"] == "fanout" and summary["readers"] == 10
    assert summary["published"] > 0 and summary["unfinished"] == 0


def test_a_step_shape_raises_the_readers_in_steps(stack: Stack, tmp_path: Path) -> None:
    code, summary, output = run_load(stack.edge.url, "fanout", tmp_path, "--shape", "step",
                                     "--set", "steps=3")
    assert code == 0 and summary["passed"], output[-3000:]
    with open(tmp_path / "fanout_stats_history.csv") as f:
        users = [int(row["User Count"]) for row in csv.DictReader(f)]
    # 1 publisher + 20 readers in 3 steps: 8, 15, 21 users
    running = [u for u in users if u]  # (0 before the start and after the end)
    assert running == sorted(running) and {8, 15, 21} <= set(running), users
