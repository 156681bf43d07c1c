"""A hostile client through the real edge (HAProxy in front of varnishd) and real relays:
one address (127.0.0.2) opens streams on random topics as fast as it can, asks for random
replay pages, spells paths oddly, asks for /metrics in absolute form, and floods publishes,
while ordinary readers on 127.0.0.1 keep getting every event within their objective
(docs/SECURITY.md; DESIGN.md, "The promise on the open internet").

The edge here exempts no network from its limits (``make up`` exempts 127.0.0.1): the
ordinary readers stay under the limits by being few. The limits are the shipped defaults
scaled down to this test's size, so that one address on a 2-core box can reach them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from relay.drill.hostile import flood_replay, flood_streams, request
from relay.edge.haproxy.limits import REFUSALS, Limits
from relay.harness.edge import Edge
from relay.harness.servers import RedisServer, Relay, metrics, publish
from relay.protocol.ids import parse
from tests.integration.conftest import TOKEN
from tests.integration.sse import subscribe

TOPIC = "news"
SECRET = "hostile-secret-" + "x" * 30
LIMITS = Limits(exempt="").but(edge_streams_per_source=40, edge_stream_opens_per_10s=100,
                               edge_requests_per_10s=100, edge_publishes_per_10s=100,
                               edge_limit_retry_s=20)
# an ordinary reader's objective: every event, in order, each within this of its publish
OBJECTIVE_S = 2.0
# another address (the abuser's rates count 10 s windows, and the one before)
CLIENT = "127.0.0.3"


class Stack:
    def __init__(self, directory: Path) -> None:
        self.redis = RedisServer(directory / "redis")
        self.servers: list[Relay] = []
        settings: dict[str, Any] = {
            "heartbeat_s": 1, "topic_linger_s": 1,
            "private_topics": "ssedge.*", "jwt_secret": SECRET, "admin_token": ADMIN}
        try:
            self.replay = Relay(directory, self.redis, TOKEN, command="replay", **settings)
            self.servers.append(self.replay)
            self.relay = Relay(directory, self.redis, TOKEN, replay_url=self.replay.url,
                               **settings)
            self.servers.append(self.relay)
            self.edge = Edge(directory / "edge", [self.relay], self.replay, limits=LIMITS)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.redis.stop()

    def refusals(self) -> dict[str, int]:
        """Each refusal backend's sessions (HAProxy's count of that refusal)."""
        names = {r.backend for r in REFUSALS}
        return {row["pxname"]: int(row["stot"] or 0) for row in self.edge.admin.stat()
                if row["pxname"] in names and row["svname"] == "BACKEND"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("hostile"))
    try:
        yield s
    finally:
        s.edge.stop()
        s.stop()


def _limit(env: str) -> int:
    return int(LIMITS.env()[env])


def _token(*patterns: str) -> str:
    return jwt.encode({"ssedge": {"subscribe": list(patterns)}, "exp": int(time.time()) + 300},
                      SECRET, algorithm="HS256")


async def _timed_reader(url: str, count: int, sent: dict[str, float],
                        delays: list[float], ids: list[str]) -> None:
    es = await subscribe(url)
    try:
        deadline = time.monotonic() + count * 0.2 + 30
        while len(ids) < count and not es.ended and time.monotonic() < deadline:
            for item in await asyncio.wait_for(es.read_chunk(), 30):
                if getattr(item, "id", None) and getattr(item, "data", None) is not None:
                    ids.append(item.id)  # type: ignore[union-attr]
                    delays.append(time.time() - sent.get(item.id, time.time()))  # type: ignore[union-attr]
    finally:
        es.close()


def test_one_address_flooding_streams_is_refused_at_the_edge_while_readers_get_every_event(
    stack: Stack,
) -> None:
    before = stack.refusals()
    relay_before = asyncio.run(metrics(stack.relay.url))

    async def run() -> tuple[dict[str, int], list[list[float]], list[list[str]], float]:
        url = f"{stack.edge.url}/v1/streams/{TOPIC}/events"
        sent: dict[str, float] = {}
        n = 50
        delays: list[list[float]] = [[], [], []]
        ids: list[list[str]] = [[], [], []]
        readers = [asyncio.ensure_future(_timed_reader(url, n, sent, delays[i], ids[i]))
                   for i in range(3)]
        await asyncio.sleep(0.5)
        peak = 0.0

        async def publisher() -> None:
            nonlocal peak
            for i in range(n):
                [event_id] = await publish(stack.edge.url, TOKEN, TOPIC, [{"data": {"n": i}}])
                sent[event_id] = time.time()
                if i % 10 == 0:
                    peak = max(peak, (await metrics(stack.relay.url))["ssedge_streams_open"])
                await asyncio.sleep(0.2)

        counts, *_ = await asyncio.gather(flood_streams(stack.edge.port, 10.0), publisher(),
                                          *readers)
        return counts, delays, ids, peak

    counts, delays, ids, peak = asyncio.run(run())
    refused = {k: v - before.get(k, 0) for k, v in stack.refusals().items()}
    relay_after = asyncio.run(metrics(stack.relay.url))
    print("hostile streams:", counts, "refusals:", refused, "peak streams at the relay:", peak)
    # the abuser met the limits at the edge: refused there, counted there
    assert counts["refused_limit"] > 0, counts
    assert refused["refuse_stream_limit"] >= counts["refused_limit"], refused
    # what reached the relay is bounded by the per-address limits, not by the abuser's speed
    # (10 s of flood: one window of new streams, at most)
    assert counts["served"] <= _limit("EDGE_STREAM_OPENS_PER_10S") + 16, counts
    # 3 readers and the abuser's streams (at most the limit) at the busiest moment sampled
    assert peak <= 3 + _limit("EDGE_STREAMS_PER_SOURCE"), peak
    # the relay never had to refuse anything itself (no topic table filled, no capacity hit)
    assert relay_after.get("ssedge_refused_streams_total", 0) == relay_before.get(
        "ssedge_refused_streams_total", 0)
    # every ordinary reader got every event, in order, each within the objective
    for reader_ids, reader_delays in zip(ids, delays, strict=True):
        assert len(reader_ids) == 50, len(reader_ids)
        assert [parse(i) for i in reader_ids] == sorted(parse(i) for i in reader_ids)
        assert max(reader_delays) < OBJECTIVE_S, max(reader_delays)


def test_a_stream_over_the_limit_is_told_to_come_back_later(stack: Stack) -> None:
    async def run() -> list[Any]:
        held = [await request(stack.edge.port, f"/v1/streams/hold-{i}/events", hold=True)
                for i in range(_limit("EDGE_STREAMS_PER_SOURCE"))]
        try:
            over = await request(stack.edge.port, "/v1/streams/one-more/events")
            publish_over = [await request(
                stack.edge.port, "/v1/streams/p/events", method="POST",
                headers={"Authorization": "Bearer not-a-token",
                         "Content-Type": "application/json"}, body=b'{"data":1}')
                for _ in range(_limit("EDGE_PUBLISHES_PER_10S") + 1)][-1]
            return [held, over, publish_over]
        finally:
            for answer in held:
                answer.close()

    held, over, publish_over = asyncio.run(run())
    assert all(a.status == 200 for a in held)
    # an EventSource over a limit is never closed for good: 200, an event stream, a long retry
    assert over.status == 200, over
    assert over.headers["content-type"] == "text/event-stream"
    assert over.headers["x-ssedge-refused"] == "limit"
    retry = int(over.body.split(b"retry: ", 1)[1].split(b"\n", 1)[0])
    assert 20_000 <= retry <= 40_000, over.body
    assert b"id:" not in over.body and b"data:" not in over.body
    # a publisher over its token's rate: 429, Retry-After, a JSON error; nothing reached a relay
    assert publish_over.status == 429, publish_over
    assert publish_over.headers["retry-after"] == "20"
    assert json.loads(publish_over.body)["error"] == "limit"


ODD_STREAMS = [
    "/v1/streams/demo/events/", "//v1/streams/demo/events", "/v1/streams//demo/events",
    "/v1/streams/demo/%65vents", "/v1/streams/d%65mo/events", "/v1/%73treams/demo/events",
    "/v1/streams/x/../demo/events", "/v1/streams/./demo/events", "/v1/streams/demo/events/.",
    "/v1/streams/demo/%2e%2e/demo/events", "/v1//streams/events?topic=demo",
    "/v1/streams/events?%74opic=demo", "/v1/streams/events?topic=demo&topic=%73sedge.stats",
]


def test_odd_spellings_of_a_stream_are_refused_never_streamed_through_varnishd(
    stack: Stack,
) -> None:
    before = stack.edge.stats().get("MAIN.client_req", 0)

    async def run() -> list[Any]:
        return [await request(stack.edge.port, target, source="127.0.0.1", timeout=5)
                for target in ODD_STREAMS]

    answers = asyncio.run(run())
    bad = {t: (a.status, a.headers.get("x-cache")) for t, a in zip(ODD_STREAMS, answers,
                                                                     strict=True)
           if a.status != 400 or "x-cache" in a.headers}
    assert not bad, bad
    assert stack.edge.stats().get("MAIN.client_req", 0) == before, "varnishd saw them"
    # the canonical spelling streams, straight from the relays
    ok = asyncio.run(request(stack.edge.port, "/v1/streams/demo/events", source="127.0.0.1"))
    assert ok.status == 200 and "x-cache" not in ok.headers and b"retry:" in ok.body


OPERATOR = [
    ("GET /metrics HTTP/1.1", {}), ("GET /readyz HTTP/1.1", {}),
    ("GET /METRICS HTTP/1.1", {}), ("GET //metrics HTTP/1.1", {}),
    ("GET /metrics/ HTTP/1.1", {}), ("GET /%6detrics HTTP/1.1", {}),
    ("GET /./metrics HTTP/1.1", {}), ("GET /metrics?x=1 HTTP/1.1", {}),
    ("GET https://x/metrics HTTP/1.1", {"Host": "x"}),
    ("GET http://edge/metrics HTTP/1.1", {}), ("GET http://edge/readyz HTTP/1.1", {}),
    ("GET /v1/../metrics HTTP/1.1", {}),
    # the operator API, with its credential: on the nodes' own ports only
    ("GET /v1/admin/audience HTTP/1.1", {"Authorization": "Bearer admin-secret"}),
    ("GET /V1/ADMIN/audience HTTP/1.1", {"Authorization": "Bearer admin-secret"}),
    ("GET //v1/admin/audience HTTP/1.1", {"Authorization": "Bearer admin-secret"}),
    ("GET /v1/%61dmin/audience HTTP/1.1", {"Authorization": "Bearer admin-secret"}),
    ("GET https://x/v1/admin/audience HTTP/1.1",
     {"Host": "x", "Authorization": "Bearer admin-secret"}),
    ("POST /v1/admin/disconnect HTTP/1.1", {"Authorization": "Bearer admin-secret"}),
]
ADMIN = "admin-secret"


def test_operator_endpoints_are_unreachable_in_any_spelling(stack: Stack) -> None:
    async def run() -> list[Any]:
        out = []
        for line, headers in OPERATOR:
            method, target, _ = line.split(" ")
            out.append(await request(stack.edge.port, target, method=method, headers=headers,
                                     source="127.0.0.1"))
        return out

    answers = asyncio.run(run())
    leaked = {line: a.status for (line, _), a in zip(OPERATOR, answers, strict=True)
              if a.status < 400 or b"ssedge_" in a.body or b"ready" in a.body
              or b"topics" in a.body}
    assert not leaked, leaked
    # the operator API answers on the node's own port, with its credential
    own = asyncio.run(request(stack.relay.port, "/v1/admin/audience",
                              headers={"Authorization": f"Bearer {ADMIN}"}, source="127.0.0.1"))
    assert own.status == 200, own.body
    # the relays' own ports still answer them: Prometheus and the edge's checks use those
    assert asyncio.run(metrics(stack.relay.url))["ssedge_streams_open"] >= 0


def test_the_stats_topic_needs_a_token(stack: Stack) -> None:
    targets = ["/v1/streams/ssedge.stats/events", "/v1/streams/ssedge.stats",
               "/v1/replay/ssedge.stats?after=0-0",
               "/v1/streams/events?topic=demo&topic=ssedge.stats",
               "/v1/streams/SSEDGE.stats/events"]

    async def run() -> tuple[list[Any], Any]:
        bare = [await request(stack.edge.port, t, source="127.0.0.1") for t in targets]
        token = _token("ssedge.*")
        good = await request(stack.edge.port, "/v1/streams/ssedge.stats/events",
                             headers={"Authorization": f"Bearer {token}"}, source="127.0.0.1")
        return bare, good

    bare, good = asyncio.run(run())
    assert [a.status for a in bare] == [401, 401, 401, 401, 401], [
        (t, a.status, a.body[:80]) for t, a in zip(targets, bare, strict=True)]
    assert good.status == 200 and b"retry:" in good.body


def test_replay_urls_have_one_form_and_a_flood_of_them_is_bounded(stack: Stack) -> None:
    asyncio.run(publish(stack.edge.url, TOKEN, "history", [{"data": i} for i in range(5)]))
    page = LIMITS.env()["EDGE_REPLAY_PAGE"]
    refused = ["/v1/replay/history?after=0-0&junk=1", "/v1/replay/history?after=0-0&after=0-0",
               "/v1/replay/history?after=00-0", "/v1/replay/history?after=0-0&limit=10",
               "/v1/replay/history?after=0-0&limit=1000&limit=1000",
               "/v1/replay/history?utm_source=x", "/v1/replay/history?after=0-0&",
               "/v1/replay/history?after=0-0&limit=0" + page]
    served = ["/v1/replay/history?after=0-0", f"/v1/replay/history?after=0-0&limit={page}",
              f"/v1/replay/history?limit={page}&after=0-0", "/v1/replay/history"]

    async def run() -> tuple[list[Any], list[Any]]:
        return ([await request(stack.edge.port, t, source="127.0.0.1") for t in refused],
                [await request(stack.edge.port, t, source="127.0.0.1") for t in served])

    no, yes = asyncio.run(run())
    assert [a.status for a in no] == [400] * len(refused), [
        (t, a.status) for t, a in zip(refused, no, strict=True)]
    assert [a.status for a in yes] == [200] * len(served), [
        (t, a.status, a.body[:100]) for t, a in zip(served, yes, strict=True)]

    # a flood of distinct `after` values from one address: each one a miss and an XRANGE at
    # the replay service, so the per-address rate bounds them
    pages_before = asyncio.run(metrics(stack.replay.url)).get("ssedge_replay_pages_total", 0)
    seconds = 5.0
    counts = asyncio.run(flood_replay(stack.edge.port, "history", seconds))
    pages = asyncio.run(metrics(stack.replay.url)).get("ssedge_replay_pages_total", 0)
    print("replay flood:", counts, "pages read:", pages - pages_before)
    assert counts.get(429, 0) > 0, counts
    # at most the rate's window's worth (10 s) of requests were served: seconds < 10
    assert counts.get(200, 0) <= _limit("EDGE_REQUESTS_PER_10S"), counts
    assert pages - pages_before <= _limit("EDGE_REQUESTS_PER_10S") + 10


def test_the_client_address_is_the_edges_word_and_in_its_access_log(stack: Stack) -> None:
    async def run() -> Any:
        return await request(stack.edge.port, "/v1/handshake?xff-probe", source=CLIENT,
                             headers={"X-Forwarded-For": "203.0.113.9",
                                      "Forwarded": "for=203.0.113.9"})

    answer = asyncio.run(run())
    assert answer.status == 200, answer
    log = subprocess.run(["varnishlog", "-n", str(stack.edge.workdir), "-d", "-g", "request",
                          "-q", 'ReqURL ~ "xff-probe"', "-i", "ReqHeader"],
                         capture_output=True, text=True, timeout=20).stdout
    forwarded = [line for line in log.splitlines() if "X-Forwarded-For" in line]
    assert forwarded and all("203.0.113.9" not in line for line in forwarded), log
    assert any(CLIENT in line for line in forwarded), log
    # HAProxy's own access log: one JSON object per request, the client's address in it
    lines = [json.loads(line) for line in (stack.edge.directory / "haproxy.log").read_text()
             .splitlines() if line.startswith("{")]
    assert any(e["client"] == CLIENT and e["path"] == "/v1/handshake" for e in lines), lines[-3:]
