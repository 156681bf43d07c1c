"""``ssedge load``: a short run of every Locust scenario against a real stack.

Redis, a replay service, two Granian relays and varnishd, started once for the module; each
scenario runs headless for a few seconds and must meet its own objectives (nothing lost, no
duplicates, p99 under the default 500 ms, the edge's hit ratio). Two runs check that a missed
objective fails the command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loadtests.scenarios import SCENARIOS
from tests.integration.conftest import TOKEN
from tests.integration.servers import RedisServer, Relay, Varnish


@dataclass
class Stack:
    edge: Varnish
    relays: list[Relay]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("load-stack")
    redis = RedisServer(directory / "redis")
    started: list[Relay | Varnish] = []
    try:
        replay = Relay(directory, redis, TOKEN, command="replay")
        started.append(replay)
        relays = [Relay(directory, redis, TOKEN, replay_url=replay.url, retry_ms=300)
                  for _ in range(2)]
        started.extend(relays)
        edge = Varnish(directory / "varnish", relays, replay)
        started.append(edge)
        yield Stack(edge, relays)
    finally:
        for server in reversed(started):
            server.stop()
        redis.stop()


def run_load(host: str, scenario: str, results: Path, *extra: str,
             token: str = TOKEN) -> tuple[int, dict[str, Any], str]:
    env = {**os.environ, "SSEDGE_PUBLISH_TOKEN": token}
    cmd = [sys.executable, "-m", "relay", "load", scenario, "--host", host, "--users", "21",
           "--spawn-rate", "50", "--duration", "7s", "--settle", "2.5", "--results",
           str(results), "--set", "retry-ms=300", "--set", "storm-every=2",
           "--set", "burst-every=1.5", "--set", "burst-size=200", *extra]
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
    line = (tmp_path / f"{scenario}-summary.txt").read_text()
    assert line.startswith(f"{scenario} PASS") and line.count("\n") == 1
    if scenario == "edge-cache":
        assert summary["hit_ratio"] >= 0.9
        return
    assert summary["readers"] >= 19 and summary["published"] > 0
    assert summary["delivered"] > 0
    assert summary["lost_total"] == summary["duplicates"] == summary["out_of_order"] == 0
    # every fast reader got the publishers' last events: the tail was checked, not skipped
    assert summary["unfinished"] == 0
    if scenario == "reconnect-storm":
        assert summary["replayed"] > 0, "storms dropped readers while events were published"


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
