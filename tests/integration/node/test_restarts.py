"""Parts restarted under load: a relay node SIGKILLed and started again on its port, and
varnishd SIGKILLed and started again on its port. Clients follow through Varnish the way
EventSource does (reconnect with Last-Event-ID); publishing never stops; every client ends
with every acknowledged event exactly once, in order."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

from relay.harness.servers import Relay, Varnish, metrics
from tests.integration.conftest import TOKEN
from tests.integration.sse import Crowd, Publisher

CLIENTS = 200


async def _open_on(relays: list[Relay], count: int, timeout: float = 30) -> float:
    """Seconds until the relays hold ``count`` streams between them."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        open_ = [(await metrics(r.url))["ssedge_streams_open"] for r in relays]
        if sum(open_) == count:
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    raise AssertionError(f"{open_} streams open, not {count}")


def test_relay_killed_and_restarted_on_its_port_takes_clients_again(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish],
) -> None:
    a = start_relay(max_connections=1000)
    b = start_relay(max_connections=1000)
    varnish = start_varnish([a, b], start_replay())
    url = f"{varnish.url}/v1/streams/relay-restart/events"

    async def run() -> None:
        crowd = Crowd(url, CLIENTS)
        await _open_on([a, b], CLIENTS)
        on_a = (await metrics(a.url))["ssedge_streams_open"]
        assert 0 < on_a < CLIENTS
        publisher = Publisher(b.url, TOKEN, "relay-restart")
        publisher.start()
        await asyncio.sleep(1.0)

        a.stop(signal.SIGKILL)
        to_b = await _open_on([b], CLIENTS)  # A's clients came back through Varnish, on B
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await asyncio.to_thread(a.start)  # the same port, the same settings
        while not (await asyncio.to_thread(varnish.healthy)).get("relay_1"):
            assert time.monotonic() - started < 20, "Varnish never saw relay A again"
            await asyncio.sleep(0.2)
        a_back = time.monotonic() - started

        # now B dies: every client must be taken by the restarted A
        await publisher.retarget(a.url)
        b.stop(signal.SIGKILL)
        to_a = await _open_on([a], CLIENTS)
        await asyncio.sleep(1.0)
        await crowd.finish(await publisher.stop())
        crowd.check(publisher.published)
        # all were on B at the end
        assert sum(c.reconnects >= 1 for c in crowd.clients) == CLIENTS
        print(f"{CLIENTS} clients, {len(publisher.published)} events each, lost 0, "
              f"duplicates 0; {on_a:.0f} on A moved to B in {to_b:.1f} s; A restarted and "
              f"healthy in Varnish after {a_back:.1f} s; B killed, all on A in {to_a:.1f} s")

    asyncio.run(run())


def test_varnishd_killed_and_restarted_clients_resume_through_it(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish],
) -> None:
    a = start_relay(max_connections=1000)
    b = start_relay(max_connections=1000)
    varnish = start_varnish([a, b], start_replay())
    url = f"{varnish.url}/v1/streams/varnish-restart/events"

    async def run() -> None:
        crowd = Crowd(url, CLIENTS)
        await _open_on([a, b], CLIENTS)
        publisher = Publisher(a.url, TOKEN, "varnish-restart")
        publisher.start()
        await asyncio.sleep(1.0)

        await asyncio.to_thread(varnish.stop, signal.SIGKILL)
        # the relays see Varnish's connections close and let the streams go
        released = await _open_on([a, b], 0)
        await asyncio.sleep(1.0)  # down for a while; events keep being published
        started = time.monotonic()
        await asyncio.to_thread(varnish.start)  # the same port, the same VCL
        up = time.monotonic() - started
        back = await _open_on([a, b], CLIENTS)
        await asyncio.sleep(1.0)
        await crowd.finish(await publisher.stop())
        crowd.check(publisher.published)
        assert all(c.reconnects >= 1 for c in crowd.clients)
        print(f"{CLIENTS} clients, {len(publisher.published)} events each, lost 0, "
              f"duplicates 0; streams released by the relays {released:.1f} s after the "
              f"kill; varnishd up again in {up:.1f} s, all clients back {back:.1f} s later")

    asyncio.run(run())
