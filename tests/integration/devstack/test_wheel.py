"""The wheel is what a user installs: built from the checkout, installed into a fresh venv
outside it, its ``ssedge up`` runs the whole stack (the VCL comes from the wheel's package
data) until the edge answers, and stops with its process group."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relay import __version__
from relay.harness.processes import free_port, kill_group, port_open
from relay.stackstatus import read_status
from relay.web import client

ROOT = Path(__file__).resolve().parents[3]


def run(argv: list[str], **kwargs: object) -> str:
    done = subprocess.run(argv, capture_output=True, timeout=300, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-2000:])
    return str(done.stdout.decode())


@pytest.mark.slow
def test_the_built_wheel_installed_elsewhere_runs_the_stack(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist),
         str(ROOT)])
    (wheel,) = dist.glob("ssedge-*.whl")
    assert wheel.name.startswith(f"ssedge-{__version__}-")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)])

    home = tmp_path / "elsewhere"  # no checkout here: nothing but the wheel to import
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SSEDGE_", "PYTHON", "VIRTUAL_ENV"))}
    ssedge = str(venv / "bin" / "ssedge")
    assert run([ssedge, "--version"], cwd=home, env=env).strip() == f"ssedge {__version__}"
    where = run([str(venv / "bin" / "python"), "-c",
                 "import relay.edge.varnish.config as v; print(v.VCL_DIR)"], cwd=home, env=env)
    vcl = Path(where.strip())
    assert vcl.is_relative_to(venv) and (vcl / "default.vcl").is_file()

    ports = [free_port() for _ in range(8)]
    redis_port, relay_a, relay_b, replay, edge, tls, upstream, ingest = ports
    stack = subprocess.Popen(
        [ssedge, "up", "--dir", str(home / "state"), "--redis-port", str(redis_port),
         "--relay-port", str(relay_a), "--relay-port", str(relay_b),
         "--replay-port", str(replay), "--edge-port", str(edge), "--tls-port", str(tls),
         "--upstream-port", str(upstream), "--ingest-port", str(ingest)],
        cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        answer = None
        while answer is None or answer.status != 200:
            assert stack.poll() is None, stack.stdout.read() if stack.stdout else b""
            assert time.monotonic() < deadline, "the edge never answered"
            time.sleep(0.2)
            if port_open(edge):
                try:
                    answer = asyncio.run(client.request(
                        "GET", f"http://127.0.0.1:{edge}/v1/handshake", timeout=2))
                except OSError:
                    answer = None
        assert answer.json()["version"] == __version__
        # a stream through the edge: the demo publisher's ticks reach it
        tail = subprocess.run([ssedge, "tail", "demo", "--count", "1",
                               "--url", f"http://127.0.0.1:{edge}"],
                              cwd=home, env=env, capture_output=True, timeout=30)
        assert tail.returncode == 0 and b"\ttick\t" in tail.stdout, tail
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have stopped on its own
            os.killpg(stack.pid, signal.SIGTERM)  # the stack's own group: it stops its children
        try:
            code = stack.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            code = stack.wait()
            # its children run in groups of their own: stopped here by the pids it noted
            status = read_status(home / "state" / "supervisor.json") or {}
            for child in status.get("children", []):
                if isinstance(child.get("pid"), int):
                    kill_group(child["pid"])
        if stack.stdout is not None:
            stack.stdout.close()
    assert code == 0
    for port in ports:
        assert not port_open(port), f"port {port} still open after the stack stopped"
