"""``ssedge drill`` as an SRE runs it: every kind of fault against a local stack with a clean
verdict, and the verdict failing where acknowledged events are really lost (a Redis without
persistence SIGKILLed, injected by a hook as against a deployment)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay.drill.faults import KINDS
from relay.harness.processes import port_open, spawn, wait_until
from relay.harness.servers import RedisServer, Relay, Varnish
from tests.integration.conftest import TOKEN
from tests.integration.upstack import SSEDGE, UpStack, clean_env

#: the same load in both drills
LOAD = ["--readers", "10", "--rate", "20", "--settle", "15s"]


def _drill(*args: str, report: Path, timeout: float = 120) -> tuple[int, str, dict[str, Any]]:
    done = subprocess.run([*SSEDGE, "drill", *LOAD, "--report", str(report), *args],
                          env=clean_env(), capture_output=True, timeout=timeout)
    out = done.stdout.decode() + done.stderr.decode()
    return done.returncode, out, json.loads(report.read_text()) if report.is_file() else {}


def test_every_fault_on_the_local_stack_loses_and_repeats_nothing(
    stack: UpStack, tmp_path: Path,
) -> None:
    code, out, report = _drill(
        "--url", stack.edge, "--token", stack.token, "--stack", str(stack.directory),
        "--every", "3s", "--freeze", "2s", report=tmp_path / "drill.json")
    assert report, f"no report (exit {code}):\n{out}"
    windows = report["windows"]
    assert [w["kind"] for w in windows] == ["baseline", *KINDS], out
    for w in windows[1:]:
        assert w["error"] is None and w["detail"], w
        assert w["target"] == {"cut-connections": "edge"}.get(w["kind"], w["target"])
        if w["kind"] != "cut-connections":  # each target answered again
            assert w["back_s"] is not None and w["back_s"] < 10, w
    by_kind = {w["kind"]: w for w in windows}
    # the faults did what they say: streams dropped, publishes refused while Redis was away
    assert by_kind["relay-kill"]["reconnects"] > 0 and by_kind["cut-connections"]["reconnects"] > 0
    assert by_kind["edge-restart"]["reconnects"] > 0
    assert by_kind["redis-kill"]["publish_failed"] > 0
    totals = report["totals"]
    assert totals["acked"] > 300, out
    print(out)
    # the verdict: every acknowledged event reached every reader once, in order, and is
    # still in Redis; no browser would have given up
    assert totals["lost"] == 0 and totals["duplicates"] == 0, out
    assert totals["out_of_order"] == 0 and totals["refused"] == 0, out
    assert code == 0 and report["passed"] and "ssedge drill: PASS" in out, out
    assert stack.status()["state"] == "running"


class VolatileRedis(RedisServer):
    """redis-server without persistence (no AOF, no RDB): a restart comes back empty."""

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = spawn(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--appendonly", "no", "--save", "",
             "--protected-mode", "no"], self.directory / "redis.log", None)
        wait_until(lambda: port_open(self.port), 10, "redis-server", self.process)


def test_the_verdict_fails_when_redis_loses_acknowledged_events(
    tmp_path: Path, start_varnish: Callable[..., Varnish],
) -> None:
    redis = VolatileRedis(tmp_path / "redis")
    started: list[Relay] = []
    stop = threading.Event()

    def restart_redis() -> None:  # what a service manager would do, here by its pid
        while not stop.wait(0.05):
            if redis.process is not None and redis.process.poll() is not None:
                time.sleep(0.3)
                redis.start()

    watcher = threading.Thread(target=restart_redis, daemon=True)
    try:
        started += [Relay(tmp_path, redis, TOKEN), Relay(tmp_path, redis, TOKEN)]
        started.append(Relay(tmp_path, redis, TOKEN, command="replay"))
        varnish = start_varnish(started[:2], started[2])
        watcher.start()
        assert redis.process is not None
        code, out, report = _drill(
            "--url", varnish.url, "--token", TOKEN, "--stack", str(tmp_path / "no-stack"),
            "--fault", "redis-kill@3s", "--duration", "7s",
            "--hook", f"redis-kill=kill -9 {redis.process.pid}", report=tmp_path / "drill.json")
        print(out)
        assert code == 1 and not report["passed"], out
        baseline, kill = report["windows"]
        assert kill["kind"] == "redis-kill" and kill["target"] == "hook" and kill["error"] is None
        # what was acknowledged before the kill is gone from the store: the audit after the
        # fault says so, in the fault's window
        assert kill["lost_store"] >= baseline["acked"] > 0, out
        assert report["totals"]["lost"] == kill["lost"] >= kill["lost_store"]
        assert any(m.startswith(f"lost {kill['lost']} > 0 (redis-kill@3s") for m in
                   report["missed"]), report["missed"]
        assert "ssedge drill: FAIL: lost" in out
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join(5)
        for server in started:
            server.stop()
        redis.stop()
