"""Keys that rotate without a restart: real relays verifying tokens with the keys of a JWKS
served by the test (tests/integration/jwks_server.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from relay.harness.processes import free_port
from relay.harness.servers import Relay, metrics, publish
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.jwks_server import JwksServer, SigningKey
from tests.integration.sse import collect, subscribe

TOPIC = "private-jwks"


@pytest.fixture
def keys() -> tuple[SigningKey, SigningKey]:
    return SigningKey("key-a", "EC"), SigningKey("key-b", "RSA")


@pytest.fixture
def jwks_server(keys: tuple[SigningKey, SigningKey]) -> Iterator[JwksServer]:
    server = JwksServer([keys[0]])
    yield server
    server.close()


def settings(url: str, **more: Any) -> dict[str, Any]:
    return {"private_topics": "private-*", "jwks_url": url, "jwks_min_interval_s": 1,
            "jwt_leeway_s": 0, "heartbeat_s": 0.5, **more}


REFUSED = "refused"  # a 200 that asks the client to come back (X-Ssedge-Refused)


def status_of(url: str, token: str) -> int | str:
    """The stream's status, or ``REFUSED`` for a stream refused for now (its keys could not be
    had: a 200 with only ``retry:``, which an EventSource retries, never a 503)."""
    async def go() -> int | str:
        es = await client.stream(url, headers={"Authorization": f"Bearer {token}"})
        es.close()
        if es.response.headers.get("x-ssedge-refused") == "keys":
            return REFUSED
        return es.response.status
    return asyncio.run(go())


def until_sure(url: str, token: str, timeout: float = 5) -> int | str:
    """The status once the relay is sure (refused for now says: a key may be published)."""
    deadline = time.monotonic() + timeout
    while True:
        status = status_of(url, token)
        if status != REFUSED or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def test_rotation_to_a_new_kid_without_a_restart(
        start_relay: Callable[..., Relay], jwks_server: JwksServer,
        keys: tuple[SigningKey, SigningKey]) -> None:
    a, b = keys
    relay = start_relay(**settings(jwks_server.url, jwks_refresh_s=1))
    url = f"{relay.url}/v1/streams/{TOPIC}/events"
    token_a, _ = a.token([TOPIC], ttl=60)

    async def read_with_a() -> None:
        es = await subscribe(url, headers={"Authorization": f"Bearer {token_a}"})
        ids = await publish(relay.url, TOKEN, TOPIC, [{"data": "before"}])
        assert [e.id for e in await collect(es, 1, timeout=5)] == ids
        es.close()

    asyncio.run(read_with_a())
    # the issuer publishes key b and removes a; tokens signed with b verify without a restart
    jwks_server.keys = [b]
    token_b, _ = b.token([TOPIC], ttl=60)
    assert until_sure(url, token_b) == 200
    # a is gone from the set: its tokens are refused for good once a fetch says so
    assert until_sure(url, a.token([TOPIC], ttl=60)[0]) == 401
    m = asyncio.run(metrics(relay.url))
    assert m["ssedge_jwks_keys"] == 1 and m["ssedge_jwks_refreshes_total"] >= 2

    # the JWKS fails: the relay keeps b's key and says so
    jwks_server.fail = "status"
    failures = m["ssedge_jwks_refresh_failures_total"]
    deadline = time.monotonic() + 5
    while asyncio.run(metrics(relay.url))["ssedge_jwks_refresh_failures_total"] == failures:
        assert time.monotonic() < deadline, "no failed refresh seen"
        time.sleep(0.2)
    assert status_of(url, b.token([TOPIC], ttl=60)[0]) == 200
    m = asyncio.run(metrics(relay.url))
    assert m["ssedge_jwks_keys"] == 1 and m["ssedge_jwks_age_seconds"] >= 0
    assert "refresh failed (HTTP 500); keeping 1 keys" in relay.log.read_text()


def test_unreachable_jwks_at_start_then_reachable(
        start_relay: Callable[..., Relay], keys: tuple[SigningKey, SigningKey]) -> None:
    a, _ = keys
    port = free_port()
    relay = start_relay(**settings(f"http://127.0.0.1:{port}/keys"))
    # the relay started and serves public topics; tokens that need the JWKS are refused for
    # now (a 200 asking to come back: a browser tries again), not for good
    assert status_of(f"{relay.url}/v1/streams/public-1/events", "") == 200
    url = f"{relay.url}/v1/streams/{TOPIC}/events"
    token_a, _ = a.token([TOPIC], ttl=60)
    assert status_of(url, token_a) == REFUSED
    m = asyncio.run(metrics(relay.url))
    assert m["ssedge_jwks_keys"] == 0 and m["ssedge_jwks_age_seconds"] == -1
    assert "no keys yet" in relay.log.read_text()
    server = JwksServer([a], port=port)
    try:
        assert until_sure(url, token_a) == 200
    finally:
        server.close()
