"""Tokens, private topics and CORS through the real varnishd (varnish/default.vcl)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import jwt

from relay.harness.servers import Relay, Varnish, publish
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import collect, subscribe

SECRET = "edge-secret-" + "x" * 30
APP, OTHER_APP = "https://app.example", "http://localhost:3000"


def token(*subscribe: str) -> str:
    return jwt.encode({"ssedge": {"subscribe": list(subscribe)}, "exp": int(time.time()) + 60},
                      SECRET, algorithm="HS256")


def get(url: str, **headers: str) -> client.Response:
    return asyncio.run(client.request("GET", url, headers=headers))


def start(start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
          start_varnish: Callable[..., Varnish]) -> tuple[Relay, Varnish]:
    settings: dict[str, Any] = {"private_topics": "private-*", "jwt_secret": SECRET,
                                "cors_origin": f"{APP}, {OTHER_APP}"}
    relay = start_relay(**settings)
    varnish = start_varnish([relay], start_replay(**settings))
    return relay, varnish


def test_authorized_answers_are_never_cached_nor_shared(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish],
) -> None:
    relay, varnish = start(start_relay, start_replay, start_varnish)
    for topic in ("private-a", "private-b", "public"):
        asyncio.run(publish(relay.url, TOKEN, topic, [{"data": topic}] * 3))
    alice, bob = token("private-a"), token("private-b")
    meta_a = f"{varnish.url}/v1/streams/private-a"

    before = varnish.stats()
    # every way a token can ride: each passed, each answered for its own token
    answers = [
        get(meta_a, Authorization=f"Bearer {alice}"),
        get(f"{meta_a}?access_token={alice}"),
        get(meta_a, Cookie=f"theme=dark; ssedge_auth={alice}"),
    ]
    # a spelling the VCL does not know (the relays decode a parameter's name) is refused by
    # HAProxy before the cache: one canonical URL (docs/SECURITY.md)
    odd = get(f"{meta_a}?acc%65ss_token={alice}")
    assert odd.status == 400 and "x-cache" not in odd.headers
    for answer in answers:
        assert answer.status == 200 and answer.json()["topic"] == "private-a"
        assert answer.headers["cache-control"] == "private, no-store"
    assert [a.headers["x-cache"] for a in answers[:3]] == ["PASS"] * 3
    # ... and nothing of them was kept: without a token, or with another reader's, the
    # same resource is refused, again and again, never a cached 200
    for _ in range(3):
        assert get(meta_a).status == 401
        assert get(meta_a, Authorization=f"Bearer {bob}").status == 403
        assert get(f"{varnish.url}/v1/replay/private-a").status == 401
    assert get(f"{varnish.url}/v1/replay/private-a", Authorization=f"Bearer {alice}").status \
        == 200
    assert get(f"{varnish.url}/v1/streams/private-b",
               Authorization=f"Bearer {bob}").json()["topic"] == "private-b"
    after = varnish.stats()
    assert after["MAIN.cache_hit"] == before["MAIN.cache_hit"], "a private answer was a hit"

    # public answers stay cached; a stray cookie neither splits nor bypasses the cache
    public = f"{varnish.url}/v1/streams/public"
    get(public)
    cached = get(public, Cookie="session=abc")
    assert cached.status == 200 and cached.headers["x-cache"] == "HIT"
    assert get(public, Authorization=f"Bearer {alice}").headers["x-cache"] == "PASS"


def test_private_streams_through_the_edge_with_query_or_cookie_token(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish],
) -> None:
    relay, varnish = start(start_relay, start_replay, start_varnish)
    url = f"{varnish.url}/v1/streams/private-s/events"
    alice = token("private-*")

    async def run() -> None:
        refused = await client.stream(url)
        assert refused.response.status == 401
        refused.close()
        by_query = await subscribe(f"{url}?access_token={alice}")
        by_cookie = await subscribe(url, headers={"Cookie": f"ssedge_auth={alice}"})
        ids = await publish(relay.url, TOKEN, "private-s", [{"data": "s1"}, {"data": "s2"}])
        for es in (by_query, by_cookie):
            assert [e.id for e in await collect(es, 2, timeout=5)] == ids
            es.close()

    asyncio.run(run())


def test_cors_answers_are_kept_per_origin(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish],
) -> None:
    _, varnish = start(start_relay, start_replay, start_varnish)
    url = f"{varnish.url}/v1/streams/cors-topic"
    for _ in range(2):  # the second round is served from the cache
        for origin in (APP, OTHER_APP):
            answer = get(url, Origin=origin)
            assert answer.headers["access-control-allow-origin"] == origin
            assert answer.headers["access-control-allow-credentials"] == "true"
            assert "origin" in answer.headers["vary"].lower()
        for headers in ({"Origin": "https://evil.example"}, {}):
            answer = get(url, **headers)
            assert answer.status == 200 and "access-control-allow-origin" not in answer.headers
    assert get(url, Origin=APP).headers["x-cache"] == "HIT"
    preflight = asyncio.run(client.request("OPTIONS", f"{varnish.url}/v1/streams/x/events",
                                           headers={"Origin": OTHER_APP,
                                                    "Access-Control-Request-Method": "GET"}))
    assert preflight.status == 204
    assert preflight.headers["access-control-allow-origin"] == OTHER_APP
    evil = asyncio.run(client.request("OPTIONS", f"{varnish.url}/v1/streams/x/events",
                                      headers={"Origin": "https://evil.example",
                                               "Access-Control-Request-Method": "GET"}))
    assert "access-control-allow-origin" not in evil.headers
