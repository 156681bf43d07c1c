"""Varnish in front of real relays and a real replay service (varnish/default.vcl)."""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import time
from collections.abc import Callable

from relay.harness.servers import Relay, Varnish, metrics, publish
from relay.protocol.ids import parse
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import Follower, collect, refused, subscribe


def test_events_cross_varnish_unbuffered(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish],
) -> None:
    relay = start_relay()
    varnish = start_varnish([relay], start_replay())

    async def run() -> tuple[list[float], list[float]]:
        direct = await subscribe(f"{relay.url}/v1/streams/fast/events")
        edge = await subscribe(f"{varnish.url}/v1/streams/fast/events")
        lat_direct, lat_edge = [], []
        for _ in range(20):
            t0 = time.perf_counter()
            await publish(relay.url, TOKEN, "fast", [{"data": "x"}])
            (await collect(direct, 1, timeout=5)) and lat_direct.append(time.perf_counter() - t0)
            (await collect(edge, 1, timeout=5)) and lat_edge.append(time.perf_counter() - t0)
            direct.early = edge.early = []  # type: ignore[attr-defined]
        direct.close()
        edge.close()
        return lat_direct, lat_edge

    lat_direct, lat_edge = asyncio.run(run())
    assert len(lat_direct) == len(lat_edge) == 20, "every event arrived both ways"
    # a buffering proxy would hold events until the response ends: they would never arrive
    print(f"median latency: direct {statistics.median(lat_direct) * 1000:.1f} ms, "
          f"through varnish {statistics.median(lat_edge) * 1000:.1f} ms")
    assert statistics.median(lat_edge) < statistics.median(lat_direct) + 0.05


def test_metadata_and_handshake_hit_the_cache(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish],
) -> None:
    a, b = start_relay(), start_relay()
    varnish = start_varnish([a, b], start_replay())
    asyncio.run(publish(a.url, TOKEN, "meta", [{"data": 1}]))

    async def hammer(n: int) -> list[client.Response]:
        out: list[client.Response] = []
        for wave in range(0, n, 100):
            out += await asyncio.gather(*(
                client.request("GET", varnish.url + ("/v1/streams/meta" if i % 2 else
                                                     "/v1/handshake"))
                for i in range(wave, wave + 100)))
        return out

    before = varnish.stats()
    responses = asyncio.run(hammer(2000))
    after = varnish.stats()
    assert all(r.status == 200 for r in responses)
    fetched = after["MAIN.backend_req"] - before["MAIN.backend_req"]
    hits = after["MAIN.cache_hit"] - before["MAIN.cache_hit"]
    print(f"2000 requests: {hits} hits, {fetched} backend fetches")
    assert fetched <= 8
    assert hits >= 1990
    assert {r.headers["x-cache"] for r in responses} <= {"HIT", "MISS"}
    # ETag towards clients: 304 when the client has it
    etag = responses[1].headers["etag"]
    conditional = asyncio.run(client.request("GET", varnish.url + "/v1/streams/meta",
                                             headers={"If-None-Match": etag}))
    assert conditional.status == 304
    # every relay down: metadata is still served from grace
    a.stop()
    b.stop()
    time.sleep(3)  # the probes mark both sick
    stale = asyncio.run(client.request("GET", varnish.url + "/v1/streams/meta"))
    assert stale.status == 200 and stale.json()["topic"] == "meta"
    gone = asyncio.run(client.request("GET", varnish.url + "/v1/streams/other"))
    assert gone.status == 503 and gone.json()["error"]


def test_publish_bodies_up_to_the_limit_pass_varnish(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish],
) -> None:
    # Varnish keeps a publish body to retry it on another relay; with the 24 KiB workspaces
    # it once had, bodies over ~4 KiB were reset ("out of workspace") and ~800 KiB ones 503ed.
    relay = start_relay()
    varnish = start_varnish([relay], start_replay())
    for count, size in ((5, 1000), (100, 1000), (990, 1040)):
        events = [{"data": "x" * size} for _ in range(count)]
        assert len(json.dumps(events)) < 1024 * 1024  # under the relay's max_body_bytes
        ids = asyncio.run(publish(varnish.url, TOKEN, "big", events))
        assert len(ids) == count


def test_500_identical_replay_requests_reach_the_replay_service_once(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish],
) -> None:
    relay = start_relay()
    replay = start_replay()
    varnish = start_varnish([relay], replay)
    ids = asyncio.run(publish(relay.url, TOKEN, "rep", [{"data": i} for i in range(100)]))
    # a closed range (immutable): the edge serves only the relays' page size as `limit`
    url = f"{varnish.url}/v1/replay/rep?after={ids[10]}&until={ids[60]}"

    async def storm() -> list[client.Response]:
        return await asyncio.gather(*(client.request("GET", url) for _ in range(500)))

    responses = asyncio.run(storm())
    assert all(r.status == 200 and r.headers["x-ssedge-count"] == "50" for r in responses)
    assert len({r.body for r in responses}) == 1
    pages = asyncio.run(metrics(replay.url))["ssedge_replay_pages_total"]
    assert pages == 1
    assert responses[0].headers["cache-control"].endswith("immutable")


def test_relay_killed_while_200_clients_stream_through_varnish(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish],
) -> None:
    replay = start_replay()
    a = start_relay(max_connections=1000)
    b = start_relay(max_connections=1000)
    varnish = start_varnish([a, b], replay)
    url = f"{varnish.url}/v1/streams/edge-fail/events"

    async def run() -> None:
        gate = asyncio.Event()
        gate.set()
        clients = [Follower([url], gate) for _ in range(200)]
        until: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        tasks = [asyncio.ensure_future(c.run(until)) for c in clients]
        await asyncio.sleep(1.5)
        ma, mb = await metrics(a.url), await metrics(b.url)
        assert ma["ssedge_streams_open"] > 0 and mb["ssedge_streams_open"] > 0
        assert ma["ssedge_streams_open"] + mb["ssedge_streams_open"] == 200
        published: list[str] = []
        meta_status: list[int] = []

        async def publish_for(seconds: float) -> None:
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            while loop.time() < end:
                published.extend(await publish(varnish.url, TOKEN, "edge-fail",
                                               [{"data": len(published) + i} for i in range(5)]))
                meta = await client.request("GET", f"{varnish.url}/v1/streams/edge-fail")
                meta_status.append(meta.status)
                await asyncio.sleep(0.02)

        await publish_for(1.0)
        a.stop(signal.SIGKILL)
        await publish_for(3.0)
        # counted while the clients still read (the edge releases a departed client at once)
        on_b = (await metrics(b.url))["ssedge_streams_open"]
        until.set_result(published[-1])
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        assert set(meta_status) == {200}, "metadata kept being served"
        moved = 0
        for n, c in enumerate(clients):
            ids = [e.id for e in c.events]
            assert ids == sorted(set(ids), key=parse), f"client {n}"
            assert ids == published, f"client {n} lost or repeated events"
            moved += c.reconnects > 0
        assert moved >= 50  # the clients of the killed node (about half) came back through :8080
        assert on_b >= moved - 5

    asyncio.run(run())


def test_idle_stream_outlives_varnish_timeouts(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish],
) -> None:
    # Varnish's deadlines shrunk to seconds so that the test does not take ten minutes: a
    # total send_timeout of 2 s would cut any response, and the idle timeouts 1 s
    relay = start_relay(heartbeat_s=0.5)
    varnish = start_varnish([relay], start_replay(), "send_timeout=2", "timeout_idle=1",
                            "idle_send_timeout=1", "between_bytes_timeout=2")

    async def run() -> None:
        async with await client.stream(f"{varnish.url}/v1/streams/idle/events",
                                       comments=True) as es:
            heartbeats = 0
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                items = await asyncio.wait_for(es.read_chunk(), 3)
                heartbeats += sum(1 for i in items if getattr(i, "text", "") == "keepalive")
                assert not es.ended, "Varnish cut the stream"
            ids = await publish(relay.url, TOKEN, "idle", [{"data": "still here"}])
            got = await collect(es, 1, timeout=5)
            assert [e.id for e in got] == ids
            assert heartbeats >= 8

    asyncio.run(run())


def test_no_relay_a_stream_is_asked_to_come_back_not_refused(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish],
) -> None:
    """Every relay gone: a stream through the edge gets the one answer an EventSource
    retries (a 200 event stream with only ``retry:``, which ends), never a 503; other
    requests keep their JSON 503."""
    relay = start_relay()
    varnish = start_varnish([relay], start_replay())
    relay.stop(signal.SIGKILL)

    async def run() -> None:
        retries = []
        for _ in range(5):
            answer, retry, why = await refused(f"{varnish.url}/v1/streams/gone/events",
                                               last_event_id="1-1")
            assert answer.headers["x-ssedge-refused"] == "edge" and "no relay" in why
            assert answer.headers["cache-control"] == "private, no-store"
            retries.append(retry)
        assert all(1000 <= r <= 3000 for r in retries) and len(set(retries)) > 1
        other = await client.request("GET", f"{varnish.url}/v1/streams/gone")
        assert other.status == 503 and other.json()["error"] == "unavailable"

    asyncio.run(run())
