"""``/metrics`` an SRE can trust: one scrape of a node holds every Granian worker's numbers
(``relay.scrape``), each under its ``worker`` slot, which a respawned worker takes over; the
names pass ``promtool check metrics``; and the edge serves neither ``/metrics`` nor
``/readyz`` to the public."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable

from relay import __version__, prometheus
from relay.harness.servers import Relay, Varnish
from relay.web import client
from relay.web.client import EventStream
from tests.integration.sse import subscribe

Samples = dict[str, dict[str, float]]  # metric -> worker -> value (summed over other labels)


def parse(text: str) -> Samples:
    out: Samples = defaultdict(dict)
    for sample in prometheus.parse(text):
        worker = sample.labels["worker"]
        out[sample.name][worker] = out[sample.name].get(worker, 0.0) + sample.value
    return out


async def scrape(url: str) -> tuple[str, Samples]:
    response = await client.request("GET", url + "/metrics", timeout=5)
    assert response.status == 200
    text = response.body.decode()
    return text, parse(text)


def promtool_problems(text: str) -> str:
    """What ``promtool check metrics`` says of an exposition (empty: nothing)."""
    done = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                          capture_output=True, timeout=30)
    return (done.stdout + done.stderr).decode().strip()


def test_every_scrape_of_a_two_worker_relay_holds_both_workers(
    start_relay: Callable[..., Relay],
) -> None:
    relay = start_relay(workers=2, heartbeat_s=0.5)

    async def run() -> None:
        streams: list[EventStream] = []
        try:
            await check(streams)
        finally:
            for es in streams:
                es.close()

    async def check(streams: list[EventStream]) -> None:
        # the harness saw one worker ready; the other may still be connecting its feed (and
        # would refuse streams meanwhile): wait for both
        deadline = time.monotonic() + 20
        while sum((await scrape(relay.url))[1]["ssedge_ready"].values()) < 2:
            assert time.monotonic() < deadline, "both workers never became ready"
            await asyncio.sleep(0.1)
        # the workers share one accept queue: which one takes a stream is the kernel's call,
        # so streams are opened until each worker holds some
        while True:
            assert len(streams) < 200, "200 streams and still one worker holds none"
            es = await subscribe(f"{relay.url}/v1/streams/m/events")
            streams.append(es)
            assert "x-ssedge-refused" not in es.response.headers, es.response.headers
            if len(streams) % 10 == 0:
                per_worker = (await scrape(relay.url))[1]["ssedge_streams_open"]
                if len(per_worker) == 2 and min(per_worker.values()) > 0:
                    break
        pids = set(relay.worker_pids())
        for _ in range(5):  # before, a scrape reached one worker at random
            text, samples = await scrape(relay.url)
            open_now = samples["ssedge_streams_open"]
            assert set(open_now) == {"0", "1"} and sum(open_now.values()) == len(streams)
            assert min(open_now.values()) > 0
            # each worker's histogram counted each of its streams' first bytes
            assert samples["ssedge_stream_first_byte_seconds_count"] == open_now
            assert {int(v) for v in samples["ssedge_process_pid"].values()} == pids
            assert sum(samples["ssedge_metrics_workers_missing"].values()) == 0
            assert f'version="{__version__}"' in text
        assert promtool_problems(text) == ""

        # a worker killed and respawned takes over its slot: the same two series go on
        victim = sorted(pids)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline, "the worker was not respawned into the scrape"
            await asyncio.sleep(0.1)
            now = set(relay.worker_pids())
            if victim in now or len(now) < 2:
                continue
            _, samples = await scrape(relay.url)
            if {int(v) for v in samples["ssedge_process_pid"].values()} == now:
                break
        assert set(samples["ssedge_streams_open"]) == {"0", "1"}

    asyncio.run(run())


def test_the_edge_serves_neither_metrics_nor_readiness(
    start_relay: Callable[..., Relay], start_varnish: Callable[..., Varnish],
) -> None:
    relay = start_relay()
    varnish = start_varnish([relay], None)

    def get(path: str) -> client.Response:
        return asyncio.run(client.request("GET", varnish.url + path, timeout=5))

    # however the path is spelt, as long as the relay would read it as /metrics or /readyz
    for path in ("/metrics", "/readyz", "//metrics", "/metrics/", "/readyz?x=1",
                 "/%6detrics", "/%6D%65trics", "/%72eadyz", "/METRICS"):
        answer = get(path)
        # refused: 404 for the canonical spelling, 400 for any other (docs/SECURITY.md)
        assert answer.status in (400, 404), (path, answer.status)
        assert b"ssedge_" not in answer.body and b"redis" not in answer.body, path
    # the relay itself still answers them, and the edge the rest
    assert asyncio.run(client.request("GET", relay.url + "/metrics")).status == 200
    assert asyncio.run(client.request("GET", relay.url + "/readyz")).status == 200
    assert get("/healthz").status == 200 and get("/v1/handshake").status == 200
