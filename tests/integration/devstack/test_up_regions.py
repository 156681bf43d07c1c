"""``ssedge up --regions``: region B (a replica of the stack's Redis, its relays, replay service
and edge) beside region A, on free ports, supervised like the rest."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

from relay.harness.processes import free_port
from relay.harness.servers import publish
from relay.protocol.wire import Event
from relay.web import client
from tests.integration.sse import collect, subscribe
from tests.integration.upstack import UpStack, wait_for

TOPIC = "travel"


async def _next(edge: str, after: str, count: int) -> list[str]:
    es = await subscribe(f"{edge}/v1/streams/{TOPIC}/events", last_event_id=after)
    async with es:
        return [e.id or "" for e in await collect(es, count, timeout=15)
                if isinstance(e, Event)]


def _replication(port: int) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), "INFO", "replication"],
                          capture_output=True, timeout=10, check=True).stdout.decode()


def test_up_regions_serves_the_same_ids_in_both_regions_and_restarts_the_replica(
    tmp_path: Path,
) -> None:
    b = {name: free_port() for name in ("redis", "relay-1", "relay-2", "replay", "edge", "tls")}
    stack = UpStack(tmp_path / "state", "--regions", "--b-redis-port", str(b["redis"]),
                    "--b-relay-port", str(b["relay-1"]), "--b-relay-port", str(b["relay-2"]),
                    "--b-replay-port", str(b["replay"]), "--b-edge-port", str(b["edge"]),
                        "--b-tls-port", str(b["tls"]))
    edge_b = f"http://127.0.0.1:{b['edge']}"
    try:
        stack.wait_up(timeout=120)
        assert "region B (reads the replica" in stack.log() and edge_b in stack.log()
        names = {c["name"] for c in stack.status()["children"]}
        assert {"b-redis", "b-relay-1", "b-relay-2", "b-replay", "b-varnish"} <= names
        assert "role:slave" in _replication(b["redis"])
        wait_for(lambda: "master_link_status:up" in _replication(b["redis"]), "replica linked")

        async def travel() -> None:
            # published in region B, it lands on the primary: both regions serve it, same id
            # (a real id to resume after: one that is none of the stream's is told ``unknown``)
            before = (await publish(edge_b, stack.token, TOPIC, [{"data": "mark"}]))[0]
            first = await publish(edge_b, stack.token, TOPIC, [{"data": "from b"}])
            assert await _next(stack.edge, before, 1) == first
            assert await _next(edge_b, before, 1) == first
            # a reader of region A moves to region B with its Last-Event-ID
            more = await publish(stack.edge, stack.token, TOPIC, [{"data": "from a"}])
            assert await _next(edge_b, first[0], 1) == more
            ready = await client.request("GET", f"http://127.0.0.1:{b['relay-1']}/readyz")
            assert ready.status == 200 and ready.json()["replica"].startswith("link up")

        asyncio.run(travel())
        # the replica is supervised: SIGKILLed, it is restarted on its port and catches up
        before = stack.child("b-redis")
        os.kill(before["pid"], signal.SIGKILL)
        stack.wait_child("b-redis", restarts=1)
        wait_for(lambda: "master_link_status:up" in _replication(b["redis"]),
                 "replica linked again")

        async def after_restart() -> None:
            before = (await publish(stack.edge, stack.token, TOPIC, [{"data": "mark"}]))[0]
            sent = await publish(stack.edge, stack.token, TOPIC, [{"data": "after"}])
            assert await _next(edge_b, before, 1) == sent

        asyncio.run(after_restart())
    finally:
        code = stack.stop()
    assert code == 0, stack.log()[-3000:]
