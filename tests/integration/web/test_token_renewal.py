"""Tokens that rotate without a gap, through the real varnishd: a stream read with a token is
told ahead of expiry; a query-string token's page reopens with a fresh one and its last id
(README, "Browser"); the cookie endpoint is passed by the edge, never cached."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable

import jwt

from relay.harness.servers import Relay, Varnish, publish
from relay.protocol.wire import Event
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import subscribe

SECRET = "renewal-secret-" + "x" * 30
TOPIC = "private-renew"
LEAD_S = 2.0


def token(ttl: float) -> tuple[str, int]:
    exp = int(time.time() + ttl)
    return jwt.encode({"ssedge": {"subscribe": ["private-*"]}, "exp": exp}, SECRET,
                      algorithm="HS256"), exp


def edge(start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
         start_varnish: Callable[..., Varnish]) -> tuple[Relay, Varnish]:
    auth = {"private_topics": "private-*", "jwt_secret": SECRET, "jwt_leeway_s": 0}
    relay = start_relay(token_refresh_s=LEAD_S, heartbeat_s=0.5, retry_ms=1000, **auth)
    return relay, start_varnish([relay], start_replay(**auth))


def test_query_token_told_before_expiry_and_the_reopen_recipe_loses_nothing(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish],
) -> None:
    relay, varnish = edge(start_relay, start_replay, start_varnish)
    base = f"{varnish.url}/v1/streams/{TOPIC}/events"

    async def run() -> None:
        published: list[str] = []
        stop = asyncio.Event()

        async def publisher() -> None:
            n = 0
            while not stop.is_set():
                published.extend(await publish(relay.url, TOKEN, TOPIC, [{"data": n}]))
                n += 1
                await asyncio.sleep(0.1)

        first, exp = token(ttl=6)
        old_url = f"{base}?access_token={first}"
        es = await subscribe(old_url)
        writing = asyncio.ensure_future(publisher())
        got: list[Event] = []
        arrival: list[float] = []
        notice = None
        while notice is None:
            for item in await asyncio.wait_for(es.read_chunk(), 10):
                if isinstance(item, Event) and item.event == "ssedge.token-expiring":
                    notice = item
                elif isinstance(item, Event):
                    got.append(item)
                    arrival.append(time.monotonic())
            assert not es.ended, "the stream ended before the page was told"
        told_at = time.time()
        # told once, ahead of exp by the lead, with no id of its own
        assert exp - LEAD_S - 0.5 <= told_at < exp, (told_at, exp)
        assert json.loads(notice.data)["expires_at"] == exp
        assert not notice.own_id and notice.id == got[-1].id

        # the recipe: a fresh token, close the old EventSource (nothing is dispatched after
        # close, so its last id is final), open the new one with that id in the query
        fresh, _ = token(ttl=60)
        es.close()
        last = es.decoder.last_event_id
        es = await subscribe(f"{base}?access_token={fresh}&last_event_id={last}")
        got.extend(getattr(es, "early", []))
        arrival.extend(time.monotonic() for _ in getattr(es, "early", []))
        asyncio.get_running_loop().call_later(1.0, stop.set)
        while not (writing.done() and got and got[-1].id == published[-1]):
            for item in await asyncio.wait_for(es.read_chunk(), 10):
                if isinstance(item, Event):
                    got.append(item)
                    arrival.append(time.monotonic())
        es.close()
        assert [e.id for e in got] == published  # each once, in order
        gap = max(b - a for a, b in itertools.pairwise(arrival))
        print(f"query token reopen: longest time without events {gap * 1000:.0f} ms "
              f"(published every 100 ms)")
        assert gap < 1.0

        # the old URL after its token expired: refused for good, as it must be
        await asyncio.sleep(max(0.0, exp - time.time()) + 0.2)
        old = await client.stream(old_url)
        assert old.response.status == 401

    asyncio.run(run())


def test_cookie_endpoint_is_passed_by_the_edge_never_cached(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish],
) -> None:
    _, varnish = edge(start_relay, start_replay, start_varnish)
    url = f"{varnish.url}/v1/auth/cookie"

    async def run() -> None:
        for _ in range(2):
            fresh, _ = token(ttl=30)
            answer = await client.request("POST", url,
                                          headers={"Authorization": f"Bearer {fresh}"})
            assert answer.status == 204 and answer.headers["x-cache"] == "PASS"
            assert answer.headers["set-cookie"].startswith(f"ssedge_auth={fresh}; Path=/v1/;")
        refused = await client.request("POST", url, headers={"Authorization": "Bearer junk"})
        assert refused.status == 401 and "set-cookie" not in refused.headers
        cleared = await client.request("DELETE", url)
        assert cleared.status == 204 and "Max-Age=0" in cleared.headers["set-cookie"]
        # the cookie it set reads the private stream, and the stream tells it ahead of exp
        fresh, exp = token(ttl=3)
        es = await subscribe(f"{varnish.url}/v1/streams/{TOPIC}/events",
                             headers={"Cookie": f"ssedge_auth={fresh}"})
        told = None
        while told is None and not es.ended:
            told = next((e for e in await asyncio.wait_for(es.read_chunk(), 5)
                         if isinstance(e, Event)), None)
        es.close()
        assert told is not None and told.event == "ssedge.token-expiring"
        assert json.loads(told.data)["expires_at"] == exp

    asyncio.run(run())
