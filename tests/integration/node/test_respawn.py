"""A relay's Granian worker SIGKILLed under load is respawned inside the node
(``respawn_failed_workers``): what that costs the worker's clients.

100 clients read one topic straight from relay A (no edge to send them elsewhere: the worst
case, they must come back to the same node), reconnecting at once with their Last-Event-ID
like an EventSource with a short ``retry``; a publisher posts 5 events every 20 ms through
relay B. One of A's workers is SIGKILLed. Measured: how long until A answers again, how long
each client went without events, and that every client still has every acknowledged event
once, in order. With two workers the other one keeps serving: the listener is shared by the
node's workers (``relay.node.listener``), so the dead worker's clients reconnect to it at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.harness.servers import Relay
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import Crowd, Publisher

CLIENTS = 100


def _workers(relay: Relay) -> list[int]:
    return [int(p) for p in
            Path(f"/proc/{relay.pid}/task/{relay.pid}/children").read_text().split()]


async def _streams_open(url: str, workers: int) -> dict[int, int]:
    """Streams open on each of the node's workers, by pid: one scrape holds every worker's
    numbers (``relay.scrape``), each worker's pid in ``ssedge_process_pid``."""
    for _ in range(50):
        body = (await client.request("GET", url + "/metrics")).body.decode()
        streams: dict[str, int] = {}
        pids: dict[str, int] = {}
        for line in body.splitlines():
            for name, into in (("ssedge_streams_open{", streams), ("ssedge_process_pid{", pids)):
                if line.startswith(name):
                    worker = line.split('worker="', 1)[1].split('"', 1)[0]
                    into[worker] = int(float(line.rsplit(" ", 1)[1]))
        if len(streams) == workers:
            return {pids[w]: n for w, n in streams.items()}
        await asyncio.sleep(0.1)  # a worker still starting
    raise AssertionError(f"not every one of {workers} workers answered in the scrape")


async def _ready(url: str) -> bool:
    try:
        return (await client.request("GET", url + "/readyz", timeout=1)).status == 200
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False


@pytest.mark.parametrize("workers", [1, 2])
def test_a_killed_worker_is_respawned_and_its_clients_resume_exactly_once(
    start_relay: Callable[..., Relay], workers: int,
) -> None:
    a = start_relay(workers=workers, max_connections=1000)
    b = start_relay()

    async def run() -> None:
        crowd = Crowd(f"{a.url}/v1/streams/respawn/events", CLIENTS)
        while sum((per_worker := await _streams_open(a.url, workers)).values()) < CLIENTS:
            await asyncio.sleep(0.1)
        publisher = Publisher(b.url, TOKEN, "respawn")
        publisher.start()
        await asyncio.sleep(1.0)

        before = _workers(a)
        victim = before[0]
        arrivals: dict[int, int] = {}
        for n, c in enumerate(crowd.clients):
            arrivals[n] = len(c.events)
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        # A answers again: a new worker took the listener (or the other one still has it)
        while not await _ready(a.url):
            await asyncio.sleep(0.01)
        answered = time.monotonic() - killed
        while len(_workers(a)) < workers or victim in _workers(a):
            assert time.monotonic() - killed < 20, "the worker was not respawned"
            await asyncio.sleep(0.01)
        respawned = time.monotonic() - killed
        # each client's first event after the kill: how long it went without
        back: dict[int, float] = {}
        waiting = set(range(CLIENTS))
        while waiting:
            assert time.monotonic() - killed < 20, f"{len(waiting)} clients never came back"
            for n in list(waiting):
                if len(crowd.clients[n].events) > arrivals[n]:
                    waiting.discard(n)
                    back[n] = time.monotonic() - killed
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.5)
        await crowd.finish(await publisher.stop())
        crowd.check(publisher.published)
        # the dead worker's clients reconnected (the others never noticed); a few twice: the
        # new worker refuses streams until its feed is connected, and the client comes back
        gaps = sorted(back[n] for n, c in enumerate(crowd.clients) if c.reconnects)
        hit = len(gaps)
        assert hit == per_worker[victim] and all(c.reconnects <= 3 for c in crowd.clients)
        assert a.process.poll() is None  # the node itself never went down
        print(f"{workers} worker(s): answering again {answered:.2f} s after the kill, worker "
              f"respawned in {respawned:.2f} s; {hit} of {CLIENTS} clients reconnected, "
              f"their first event after the kill: median {statistics.median(gaps):.2f} s, "
              f"max {gaps[-1]:.2f} s (events every 20 ms); "
              f"{len(publisher.published)} events each, lost 0, duplicates 0")

    asyncio.run(run())
