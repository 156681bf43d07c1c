"""A relay node dies under load: its clients reconnect to another node with Last-Event-ID and
end with every event exactly once, in order; events trimmed meanwhile are announced by an
``ssedge.reset`` first; with the replay service dead too, the node reads history from Redis."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import pytest

from relay.harness.servers import RedisServer, Relay, metrics, publish
from relay.protocol.ids import parse
from tests.integration.conftest import TOKEN
from tests.integration.sse import Follower

CLIENTS = 200


@pytest.mark.parametrize("gap", ["ring", "replay", "replay-killed", "expired"])
def test_clients_of_a_killed_relay_resume_on_another_exactly_once(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    redis_server: RedisServer, gap: str,
) -> None:
    replay = start_replay(replay_page=100)
    a = start_relay(max_connections=1000)
    b_ring = 10_000 if gap == "ring" else 20
    b = start_relay(max_connections=1000, ring_events=b_ring, replay_url=replay.url,
                    replay_page=100)
    topic = f"fail-{gap}"

    async def run() -> None:
        gate = asyncio.Event()
        if gap == "ring":
            gate.set()  # reconnect at once: B's ring holds everything missed
        clients = [Follower([f"{n.url}/v1/streams/{topic}/events" for n in (a, b)], gate)
                   for _ in range(CLIENTS)]
        until: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        tasks = [asyncio.ensure_future(c.run(until)) for c in clients]
        await asyncio.sleep(1.0)  # every client subscribed on A before the first event
        published: list[str] = []

        async def publish_for(seconds: float) -> None:
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            n = len(published)
            while loop.time() < end:
                published.extend(await publish(b.url, TOKEN, topic,
                                               [{"data": n + i} for i in range(10)]))
                n += 10
                await asyncio.sleep(0.02)

        await publish_for(1.0)
        a.stop(signal.SIGKILL)
        await publish_for(1.0)
        if gap != "ring":
            # while the clients are away, far more than B's ring is published ...
            for _ in range(4):
                published.extend(await publish(b.url, TOKEN, topic,
                                               [{"data": "x"} for _ in range(100)]))
            if gap == "expired":
                # ... and retention trims past every client's last id
                redis_server.cli("XTRIM", f"ssedge:{{{topic}}}", "MAXLEN", "50")
            if gap == "replay-killed":
                # ... and the replay service dies: B must read the history from Redis itself
                replay.stop(signal.SIGKILL)
            gate.set()
        await publish_for(1.0)
        until.set_result(published[-1])
        await asyncio.wait_for(asyncio.gather(*tasks), 60)

        retained = [line for line in redis_server.cli(
            "XRANGE", f"ssedge:{{{topic}}}", "-", "+").split("\n")
            if line[:1].isdigit() and "-" in line]
        for n, c in enumerate(clients):
            ids = [e.id for e in c.events if e.event != "ssedge.reset"]
            resets = [e for e in c.events if e.event == "ssedge.reset"]
            assert c.reconnects >= 1
            assert ids == sorted(set(ids), key=parse), f"client {n}: duplicate or out of order"
            if gap == "expired":
                assert len(resets) == 1, f"client {n}"
                before_kill = ids[: ids.index(retained[0])]
                assert ids == before_kill + retained, f"client {n}"
                assert before_kill == published[: len(before_kill)]
            else:
                assert resets == []
                assert ids == published, f"client {n}"
        mb = await metrics(b.url)
        if gap == "ring":
            assert mb["ssedge_catchups_total"] == 0
        else:
            assert mb["ssedge_catchups_total"] >= CLIENTS
            assert mb["ssedge_replay_fetches_total"] <= 10  # shared by 200 reconnects
        if gap == "replay-killed":
            assert mb["ssedge_replay_fallbacks_total"] >= 1
            assert mb["ssedge_replay_fallbacks_total"] == mb["ssedge_replay_fetches_total"]
            assert mb["ssedge_redis_history_reads_total"] >= mb["ssedge_replay_fallbacks_total"]
            print(f"replay service killed: {CLIENTS} clients caught up from Redis, "
                  f"{mb['ssedge_replay_fallbacks_total']:.0f} fallbacks, "
                  f"{len(published)} events each, lost 0, duplicates 0")

    asyncio.run(run())
