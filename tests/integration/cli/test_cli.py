"""The ssedge command as a user runs it: bad settings, publish, tail, and the local stack."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relay.harness.processes import free_port, port_open
from relay.harness.servers import Relay
from relay.web import client
from tests.integration.conftest import TOKEN

SSEDGE = [sys.executable, "-m", "relay"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSEDGE_")}
    env.update(extra)
    return env


@pytest.mark.parametrize(("args", "env", "named"), [
    (["--ring-events", "abc"], {}, "SSEDGE_RING_EVENTS"),
    (["--port", "0"], {}, "SSEDGE_PORT"),
    ([], {"SSEDGE_HEARTBEAT_S": "-1"}, "SSEDGE_HEARTBEAT_S"),
    ([], {"SSEDGE_REDIS_URL": "http://x"}, "SSEDGE_REDIS_URL"),
])
def test_bad_setting_stops_start_up_with_one_line_naming_it(
    args: list[str], env: dict[str, str], named: str
) -> None:
    done = subprocess.run([*SSEDGE, "relay", *args], env=clean_env(**env), capture_output=True,
                          timeout=30)
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in lines[0]


@pytest.mark.parametrize(("args", "named"), [
    ([], "nothing to ingest"),
    (["--from", "http://h/x"], "--from needs --topic"),
    (["--topic", "t", "--from", "ftp://h/x"], "bad upstream URL"),
    (["--topic", "bad topic", "--from", "http://h/x"], "bad topic"),
    (["--ingest-file", "/nonexistent.toml"], "cannot read ingest file"),
    (["--topic", "t", "--from", "http://h/x", "--ingest-lease-ms", "5"], "SSEDGE_INGEST_LEASE_MS"),
])
def test_bad_ingest_arguments_stop_it_with_one_line(args: list[str], named: str) -> None:
    done = subprocess.run([*SSEDGE, "ingest", *args], env=clean_env(), capture_output=True,
                          timeout=30)
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and named in lines[0], lines


def test_publish_then_tail_resumes_from_an_id(relay: Relay) -> None:
    env = clean_env(SSEDGE_URL=relay.url, SSEDGE_PUBLISH_TOKEN=TOKEN)
    ids = []
    for word in ("one", "two", "three"):
        done = subprocess.run([*SSEDGE, "publish", "cli", word, "--event", "word"], env=env,
                              capture_output=True, timeout=30, check=True)
        ids.append(done.stdout.decode().strip())
    tail = subprocess.run([*SSEDGE, "tail", "cli", "--last-event-id", ids[0], "--count", "2"],
                          env=env, capture_output=True, timeout=30, check=True)
    assert tail.stdout.decode().splitlines() == [f"{ids[1]}\tword\ttwo", f"{ids[2]}\tword\tthree"]
    wrong = subprocess.run([*SSEDGE, "publish", "cli", "x", "--token", "nope"], env=env,
                           capture_output=True, timeout=30)
    assert wrong.returncode == 1 and b"401" in wrong.stderr
    # the same --key again (a publisher that lost its answer) prints the first id, once
    again = [subprocess.run([*SSEDGE, "publish", "cli", "four", "--key", "k-4"], env=env,
                            capture_output=True, timeout=30, check=True).stdout
             for _ in range(2)]
    assert again[0] == again[1]
    meta = asyncio.run(client.request("GET", f"{relay.url}/v1/streams/cli")).json()
    assert meta["length"] == 4 and meta["last_id"] == again[0].decode().strip()
    other = subprocess.run([*SSEDGE, "publish", "cli", "five", "--key", "k-4"], env=env,
                           capture_output=True, timeout=30)
    assert other.returncode == 1 and b"422" in other.stderr


def test_up_runs_the_stack_writes_its_env_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    redis_port, relay_a, relay_b, replay, edge, upstream, ingest, tls = (
        free_port() for _ in range(8))
    state = tmp_path / "state"
    stack = subprocess.Popen(
        [*SSEDGE, "up", "--dir", str(state), "--redis-port", str(redis_port),
         "--relay-port", str(relay_a), "--relay-port", str(relay_b),
         "--replay-port", str(replay), "--edge-port", str(edge), "--tls-port", str(tls),
         "--upstream-port", str(upstream), "--ingest-port", str(ingest), "--fsync", "always"],
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert stack.stdout is not None
        banner = b""
        deadline = time.monotonic() + 60
        while b"Ctrl-C stops everything" not in banner and time.monotonic() < deadline:
            line = stack.stdout.readline()
            if not line:
                break
            banner += line
        assert b"ssedge stack is up" in banner, banner
        # --fsync always: every acknowledged event is on disk before its 201
        fsync = subprocess.run(["redis-cli", "-p", str(redis_port), "CONFIG", "GET",
                                "appendfsync"], capture_output=True, timeout=10, check=True)
        assert fsync.stdout.split() == [b"appendfsync", b"always"]
        token = (state / "publish-token").read_text().strip()
        env_file = (state / "env").read_text()
        assert f"SSEDGE_PUBLISH_TOKEN={token}" in env_file
        # the demo publisher ticks on the demo topic: tail sees it through Varnish and
        # through either relay
        for port in (edge, relay_a, relay_b):
            tail = subprocess.run(
                [*SSEDGE, "tail", "demo", "--count", "1", "--url", f"http://127.0.0.1:{port}"],
                env=clean_env(), capture_output=True, timeout=30, check=True,
            )
            assert b"\ttick\t" in tail.stdout
        # the demo upstream's events, ingested, through Varnish; its ingest says it follows it
        tail = subprocess.run(
            [*SSEDGE, "tail", "ingest-demo", "--count", "1", "--url", f"http://127.0.0.1:{edge}"],
            env=clean_env(), capture_output=True, timeout=30, check=True,
        )
        assert b"\tquote\t" in tail.stdout or b"\tsummary\t" in tail.stdout
        ingest_metrics = asyncio.run(client.request(
            "GET", f"http://127.0.0.1:{ingest}/metrics")).body.decode()
        assert 'upstream="demo"} 1' in ingest_metrics.split("ssedge_ingest_active{")[1]
        # the replay service serves the demo topic's history
        tail = subprocess.run(
            [*SSEDGE, "tail", "demo", "--count", "1", "--since", "earliest",
             "--url", f"http://127.0.0.1:{relay_a}"],
            env=clean_env(), capture_output=True, timeout=30, check=True,
        )
        assert b"\ttick\t" in tail.stdout
        replay_page = asyncio.run(client.request("GET", f"http://127.0.0.1:{replay}/v1/replay/demo"))
        assert replay_page.status == 200 and b"event: tick" in replay_page.body
        # ssedge commands run in the checkout read .ssedge/env
        published = subprocess.run([*SSEDGE, "publish", "demo", "hello"], cwd=tmp_path,
                                   env=clean_env(), capture_output=True, timeout=30)
        assert published.returncode != 0  # no .ssedge/ here: no token, so 401
        (tmp_path / ".ssedge").symlink_to(state)
        published = subprocess.run([*SSEDGE, "publish", "demo", "hello"], cwd=tmp_path,
                                   env=clean_env(), capture_output=True, timeout=30)
        assert published.returncode == 0, published.stderr
        # private-* topics: a token minted in the checkout reads them, nothing else does
        subprocess.run([*SSEDGE, "publish", "private-demo", "secret"], cwd=tmp_path,
                       env=clean_env(), capture_output=True, timeout=30, check=True)
        minted = subprocess.run([*SSEDGE, "token", "--subscribe", "private-*"], cwd=tmp_path,
                                env=clean_env(), capture_output=True, timeout=30, check=True)
        tail_private = [*SSEDGE, "tail", "private-demo", "--since", "earliest", "--count", "1"]
        refused = subprocess.run(tail_private, cwd=tmp_path, env=clean_env(),
                                 capture_output=True, timeout=30)
        assert refused.returncode == 1 and b"401" in refused.stderr
        read = subprocess.run([*tail_private, "--token", minted.stdout.decode().strip()],
                              cwd=tmp_path, env=clean_env(), capture_output=True, timeout=30)
        assert read.returncode == 0 and read.stdout.endswith(b"\tsecret\n"), read
    finally:
        stack.send_signal(signal.SIGINT)
        stack.wait(30)
        if stack.stdout is not None:
            stack.stdout.close()
    for port in (redis_port, relay_a, relay_b, replay, edge, upstream, ingest):
        assert not port_open(port), f"port {port} still open after Ctrl-C"


@pytest.mark.parametrize("command", [["tail", "piped"], ["tail", "piped", "--json"]])
def test_tail_into_a_reader_that_leaves_ends_quietly(relay: Relay, command: list[str]) -> None:
    """`ssedge tail demo | head -1`: when the pipe's reader is gone, tail ends (0, nothing on
    stderr) instead of taking the broken pipe for a lost relay and reconnecting for ever."""
    env = clean_env(SSEDGE_URL=relay.url, SSEDGE_PUBLISH_TOKEN=TOKEN)
    for word in ("one", "two", "three"):
        subprocess.run([*SSEDGE, "publish", "piped", word], env=env, capture_output=True,
                       timeout=30, check=True)
    read, write = os.pipe()
    tail = subprocess.Popen([*SSEDGE, *command, "--since", "earliest"], env=env, stdout=write,
                            stderr=subprocess.PIPE)
    os.close(write)
    try:
        with os.fdopen(read, "rb") as pipe:
            assert pipe.readline()  # the first event, then the reader leaves
        subprocess.run([*SSEDGE, "publish", "piped", "four"], env=env, capture_output=True,
                       timeout=30, check=True)
        _, err = tail.communicate(timeout=20)
        assert tail.returncode == 0 and b"reconnecting" not in err, err
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
