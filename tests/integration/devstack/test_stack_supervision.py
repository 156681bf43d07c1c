"""``ssedge up`` survives its parts: each kind of child SIGKILLed in turn comes back on its
port and the stack serves through the edge all along; acknowledged events are intact after
Redis comes back on its AOF; a relay's crashed worker is respawned by Granian inside the node;
a child that cannot stay up, or cannot start, stops the stack with a non-zero exit."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import redis

from relay.harness.processes import group_members, port_open
from relay.web import client
from tests.integration.sse import collect, subscribe
from tests.integration.upstack import UpStack, get, wait_for

TOPIC = "survive"


async def _publish(stack: UpStack, events: list[dict[str, Any]], timeout: float = 20) -> list[str]:
    """Publish through the edge, retrying refusals (503: a part is still coming back)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = await client.request(
                "POST", f"{stack.edge}/v1/streams/{TOPIC}/events",
                headers={"Authorization": f"Bearer {stack.token}"}, json_body=events, timeout=5)
            if response.status == 201:
                return list(response.json()["ids"])
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        assert time.monotonic() < deadline, "publishing through the edge kept failing"
        await asyncio.sleep(0.2)


async def _serves(stack: UpStack, acked: list[str]) -> None:
    """One event published through the edge arrives on a stream read through the edge."""
    after = acked[-1] if acked else "0-0"
    ids = await _publish(stack, [{"data": f"probe {len(acked)}"}])
    deadline = time.monotonic() + 20
    while True:
        try:
            es = await subscribe(f"{stack.edge}/v1/streams/{TOPIC}/events", last_event_id=after)
            async with es:
                got = await collect(es, 1, timeout=5)
            if got:
                assert [e.id for e in got] == ids
                acked.extend(ids)
                return
        except (OSError, AssertionError, asyncio.IncompleteReadError):
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


def _latest_snapshot(port: int) -> dict[str, Any] | None:
    with redis.Redis(port=port, socket_timeout=2) as r:
        entries = r.xrevrange("ssedge:{ssedge.stats}", count=1)
    if not entries:
        return None
    snapshot: dict[str, Any] = json.loads(entries[0][1][b"d"])
    return snapshot


def _ready(stack: UpStack, name: str) -> bool:
    """The child answers as it should on its port."""
    port = stack.ports.get(name, 0)
    if name == "redis":
        try:
            with redis.Redis(port=port, socket_timeout=1) as r:
                return bool(r.ping())
        except redis.RedisError:
            return False
    if name in ("relay-1", "relay-2", "replay", "ingest"):
        answer = get(f"http://127.0.0.1:{port}/readyz")
        return answer is not None and answer.status == 200
    if name in ("varnish", "edge"):  # varnishd behind HAProxy, and HAProxy
        answer = get(f"{stack.edge}/v1/handshake")
        return answer is not None and answer.status == 200
    if name == "stats":  # a snapshot that knows the collector was restarted
        snap = _latest_snapshot(stack.ports["redis"])
        return snap is not None and any(
            c["name"] == "stats" and c["restarts"] >= 1 for c in snap["stack"]["children"])
    return port_open(port)


KINDS = ("relay-1", "replay", "varnish", "edge", "redis", "stats", "upstream", "ingest")


def test_each_child_sigkilled_comes_back_on_its_port_and_the_stack_keeps_serving(
    stack: UpStack,
) -> None:
    acked: list[str] = []
    asyncio.run(_serves(stack, acked))
    figures = []
    for name in KINDS:
        if name == "redis":
            # written moments before the kill: the AOF must hold every acknowledged one
            acked += asyncio.run(_publish(stack, [{"data": f"batch {i}"} for i in range(50)]))
        before = stack.child(name)
        killed = time.monotonic()
        os.kill(before["pid"], signal.SIGKILL)
        after = stack.wait_child(name, restarts=1)
        assert after["pid"] != before["pid"] and after["last_exit"] == -signal.SIGKILL
        wait_for(lambda name=name: _ready(stack, name), f"{name} ready again")
        back = time.monotonic() - killed
        # nothing of the old process group is left (a relay's worker, varnishd's child)
        assert group_members(before["pid"]) == []
        asyncio.run(_serves(stack, acked))
        figures.append(f"{name} {back:.1f} s")
        assert f"{name} exited (-9 SIGKILL); restarting in 0.5 s (restart 1)" in stack.log()

    # a relay's worker that dies is respawned inside the node: no restart of the node
    relay = stack.child("relay-2")
    worker = int(Path(f"/proc/{relay['pid']}/task/{relay['pid']}/children").read_text().split()[0])
    os.kill(worker, signal.SIGKILL)
    respawned = wait_for(lambda: _respawned(relay["pid"], worker) and _ready(stack, "relay-2"),
                         "relay-2's worker respawned")
    assert stack.child("relay-2")["restarts"] == 0 and stack.child("relay-2")["state"] == "up"
    asyncio.run(_serves(stack, acked))

    # every acknowledged event, once, in order, through the edge after all of it
    async def read_all() -> list[str]:
        es = await subscribe(f"{stack.edge}/v1/streams/{TOPIC}/events", last_event_id="0-0")
        async with es:
            return [e.id or "" for e in await collect(es, len(acked), timeout=10)]

    assert asyncio.run(read_all()) == acked
    # the dashboard's snapshots count the restarts
    wait_for(lambda: (_latest_snapshot(stack.ports["redis"]) or {}).get(
        "stack", {}).get("restarts") == len(KINDS), "snapshot with every restart")
    assert stack.status()["state"] == "running"
    print(f"SIGKILLed, then back and ready after: {', '.join(figures)}; "
          f"relay-2's worker respawned and ready in {respawned:.1f} s; {len(acked)} events intact")


def _respawned(pid: int, old_worker: int) -> bool:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return bool(children) and str(old_worker) not in children


def test_a_child_in_a_crash_loop_stops_the_stack_non_zero(tmp_path: Path) -> None:
    stack = UpStack(tmp_path / "state", "--backoff-max", "0.2", "--restart-burst", "3")
    holder = socket.socket()
    # the killed server's accepted connections linger (TIME_WAIT): only a listener conflicts
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        stack.wait_up()
        upstream = stack.child("upstream")
        os.kill(upstream["pid"], signal.SIGKILL)
        # its port taken by someone else: every restart fails at once
        deadline = time.monotonic() + 5
        while True:
            try:
                holder.bind(("127.0.0.1", stack.ports["upstream"]))
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.002)
        holder.listen()
        code = stack.process.wait(60)
        assert code == 1
        log = stack.log()
        assert "upstream keeps exiting" in log and "after 3 restarts within 60 s" in log, log
        assert "ssedge stack stopped (exit 1)." in log
        status = stack.status()
        assert status["state"] == "failed" and "upstream keeps exiting" in status["failure"]
        for name, port in stack.ports.items():
            if name != "upstream":
                assert not port_open(port), f"{name} still on {port}"
    finally:
        holder.close()
        stack.stop()


def test_a_child_that_fails_to_start_stops_the_stack_non_zero(tmp_path: Path) -> None:
    # a bad setting: the replay service (the first child reading settings) stops at start
    stack = UpStack(tmp_path / "state", env={"SSEDGE_RING_EVENTS": "many"})
    try:
        assert stack.process.wait(60) == 1
        log = stack.log()
        assert "replay exited (2) while starting" in log, log
        assert "SSEDGE_RING_EVENTS" in (tmp_path / "state" / "replay.log").read_text()
        assert not port_open(stack.ports["redis"])
    finally:
        stack.stop()


def _alive(pid: int) -> bool:
    """A process that still runs (an exited one reparented to init may linger as a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_stack_killed_without_a_word_leaves_nothing_running(tmp_path: Path) -> None:
    # SIGKILL (or the OOM killer) gives the stack no chance to stop its children: each is
    # told by the kernel (parent death signal) and stops, freeing its port for the next run
    stack = UpStack(tmp_path / "state")
    try:
        stack.wait_up()
        # the ingest following its upstream: told to stop when Redis has gone too, it must
        # not wait for its retries to end (a cancel swallowed by redis-py kept it 15 s)
        ingest_log = stack.directory / "ingest.log"
        wait_for(lambda: "lease taken" in ingest_log.read_text(), "the ingest following")
        children = {c["name"]: c["pid"] for c in stack.status()["children"]}
        os.kill(stack.process.pid, signal.SIGKILL)
        stack.process.wait(10)
        deadline = time.monotonic() + 5
        while True:
            running = sorted(name for name, pid in children.items() if _alive(pid))
            listening = sorted(name for name, port in stack.ports.items() if port_open(port))
            if not running and not listening:
                break
            assert time.monotonic() < deadline, f"still running {running}, listening {listening}"
            time.sleep(0.1)
    finally:
        stack.stop()
