"""Private topics and publish rights on real relays, a real replay service and Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relay.harness.servers import RedisServer, Relay, metrics, publish
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import collect, subscribe

SECRET = "integration-secret-" + "x" * 20


def token(subscribe: list[str] | None = None, publish: list[str] | None = None,
          ttl: float = 60, key: Any = SECRET, alg: str = "HS256") -> str:
    claims = {"ssedge": {"subscribe": subscribe or [], "publish": publish or []},
              "exp": int(time.time() + ttl)}
    return jwt.encode(claims, key, algorithm=alg)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def call(method: str, url: str, **kwargs: Any) -> client.Response:
    return asyncio.run(client.request(method, url, **kwargs))


def assert_error(response: client.Response, status: int, code: str) -> None:
    assert response.status == status, (response.status, response.body)
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == code
    assert response.headers["cache-control"] == "no-store"


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def private_settings(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    public = tmp_path / "jwt-public.pem"
    public.write_bytes(ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return {"private_topics": "private-*,secret.*", "jwt_secret": SECRET,
            "jwt_public_key": str(public), "jwt_leeway_s": 0}


@pytest.fixture
def relay(start_relay: Callable[..., Relay], private_settings: dict[str, Any]) -> Relay:
    return start_relay(heartbeat_s=0.5, topic_linger_s=0, **private_settings)


def open_status(url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    async def go() -> tuple[int, dict[str, str], bytes]:
        es = await client.stream(url, **kwargs)
        es.close()
        return es.response.status, es.response.headers, es.response.body
    return asyncio.run(go())


def test_private_stream_401_403_200(relay: Relay, ec_key: ec.EllipticCurvePrivateKey) -> None:
    url = f"{relay.url}/v1/streams/private-1/events"
    status, headers, _ = open_status(url)
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="ssedge"'
    for bad in ("garbage", token(["private-*"], ttl=-5), token(["private-*"], key="y" * 40),
                token(["private-*"], key=ec.generate_private_key(ec.SECP256R1()),
                      alg="ES256")):
        status, headers, _ = open_status(url, headers=bearer(bad))
        assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
    status, headers, _ = open_status(url, headers=bearer(token(["private-2", "secret.*"])))
    assert status == 403 and "insufficient_scope" in headers["www-authenticate"]

    good_hs = token(["private-1"])
    good_es = token(["private-*"], key=ec_key, alg="ES256")

    async def read_each_way() -> None:
        streams = [
            await subscribe(url, headers=bearer(good_hs)),
            await subscribe(f"{url}?access_token={good_es}"),
            await subscribe(url, headers={"Cookie": f"theme=x; ssedge_auth={good_hs}"}),
            await subscribe(f"{relay.url}/v1/streams/public-1/events"),  # no token needed
        ]
        for es in streams:
            assert es.response.headers["cache-control"] == "private, no-store"
        ids = await publish(relay.url, TOKEN, "private-1", [{"data": "for readers only"}])
        await publish(relay.url, TOKEN, "public-1", [{"data": "for all"}])
        for es in streams[:3]:
            assert [e.id for e in await collect(es, 1, timeout=5)] == ids
        assert [e.data for e in await collect(streams[3], 1, timeout=5)] == ["for all"]
        for es in streams:
            es.close()

    asyncio.run(read_each_way())


def test_stream_ends_when_its_token_expires(relay: Relay) -> None:
    short = token(["private-*"], ttl=2)
    url = f"{relay.url}/v1/streams/private-exp/events"

    async def run() -> float:
        t0 = time.monotonic()
        async with await subscribe(url, headers=bearer(short)) as es:
            while not es.ended:
                await asyncio.wait_for(es.read_chunk(), 5)
        return time.monotonic() - t0

    lasted = asyncio.run(run())
    assert lasted < 4.5
    # the client comes back with its expired token: refused
    assert open_status(url, headers=bearer(short))[0] == 401


def test_publish_rights_by_pattern(relay: Relay, redis_server: RedisServer) -> None:
    def post(topic: str, auth: str) -> client.Response:
        return call("POST", f"{relay.url}/v1/streams/{topic}/events", headers=bearer(auth),
                    json_body={"data": "x"})

    newsroom = token(publish=["news.*"])
    assert post("news.sport", newsroom).status == 201
    assert_error(post("private-1", newsroom), 403, "forbidden")
    assert_error(post("news.sport", token(subscribe=["*"])), 403, "forbidden")
    assert_error(post("news.sport", token(publish=["*"], ttl=-5)), 401, "unauthorized")
    assert_error(post("news.sport", token(publish=["*"], key="z" * 40)), 401, "unauthorized")
    assert post("private-1", TOKEN).status == 201  # the static token still publishes anywhere
    # a refused publish wrote nothing, even with a valid body
    assert int(redis_server.cli("XLEN", "ssedge:{news.sport}")) == 1
    assert int(redis_server.cli("XLEN", "ssedge:{private-1}")) == 1


def test_private_metadata_and_replay(relay: Relay, start_replay: Callable[..., Relay],
                                     private_settings: dict[str, Any]) -> None:
    replay = start_replay(**private_settings)
    ids = asyncio.run(publish(relay.url, TOKEN, "private-m", [{"data": i} for i in range(3)]))
    public_ids = asyncio.run(publish(relay.url, TOKEN, "public-m",
                                     [{"data": i} for i in range(3)]))
    reader = bearer(token(["private-m"]))
    for base, path in ((relay.url, "/v1/streams/private-m"),
                       (replay.url, "/v1/replay/private-m?limit=2")):
        assert_error(call("GET", base + path), 401, "unauthorized")
        assert_error(call("GET", base + path, headers=bearer(token(["private-x"]))), 403,
                     "forbidden")
        answer = call("GET", base + path, headers=reader)
        assert answer.status == 200 and answer.headers["cache-control"] == "private, no-store"
    assert call("GET", f"{relay.url}/v1/streams/private-m", headers=reader).json()["last_id"] \
        == ids[-1]
    # (a page after 0-0 is never final: the start of whatever life the stream is in)
    public = call("GET", f"{replay.url}/v1/replay/public-m?after={public_ids[0]}&limit=1")
    assert public.status == 200 and public.headers["cache-control"].endswith("immutable")


def test_private_history_is_read_from_redis_not_the_replay_service(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    private_settings: dict[str, Any],
) -> None:
    replay = start_replay(replay_page=10, **private_settings)
    relay = start_relay(replay_url=replay.url, ring_events=5, replay_page=10,
                        **private_settings)
    sent = {topic: asyncio.run(publish(relay.url, TOKEN, topic,
                                       [{"data": i} for i in range(30)]))
            for topic in ("private-h", "public-h")}

    async def resume(topic: str, headers: dict[str, str] | None = None) -> list[str]:
        async with await subscribe(f"{relay.url}/v1/streams/{topic}/events",
                                   last_event_id=sent[topic][0], headers=headers) as es:
            return [e.id for e in await collect(es, 29, timeout=10)]

    assert asyncio.run(resume("private-h", bearer(token(["private-h"])))) == sent["private-h"][1:]
    assert asyncio.run(resume("public-h")) == sent["public-h"][1:]
    replay_pages = asyncio.run(metrics(replay.url))["ssedge_replay_pages_total"]
    relay_metrics = asyncio.run(metrics(relay.url))
    assert replay_pages == relay_metrics["ssedge_replay_fetches_total"] >= 1  # public only
    assert relay_metrics["ssedge_redis_history_reads_total"] >= 1  # private, from Redis
    assert relay_metrics["ssedge_replay_fallbacks_total"] == 0


def test_readers_keep_every_event_while_bad_tokens_storm_the_topic(relay: Relay) -> None:
    """100 authorised readers of a private topic, 200 events published in batches while
    1,000 requests with bad tokens hit the same topic: every reader gets every event once, in
    order; every bad request is refused; nothing else."""
    url = f"{relay.url}/v1/streams/private-storm/events"
    now = int(time.time())
    bad_tokens = [
        "garbage", token(["private-*"], ttl=-5), token(["private-*"], key="w" * 40),
        token(["private-other"]), token(publish=["*"]),
        jwt.encode({"ssedge": {"subscribe": ["*"]}, "exp": now + 60}, None, algorithm="none"),
    ]
    good = token(["private-storm"])

    async def run() -> tuple[list[list[str]], list[str], dict[int, int], float]:
        readers = [await subscribe(url, headers=bearer(good)) if n % 2 else
                   await subscribe(f"{url}?access_token={good}") for n in range(100)]
        refused: dict[int, int] = {}

        async def attack(n: int) -> None:
            es = await client.stream(url, headers=bearer(bad_tokens[n % len(bad_tokens)]))
            refused[es.response.status] = refused.get(es.response.status, 0) + 1
            es.close()

        t0 = time.monotonic()
        published: list[str] = []
        for wave in range(10):
            attacks = asyncio.gather(*(attack(wave * 100 + n) for n in range(100)))
            published += await publish(relay.url, TOKEN, "private-storm",
                                       [{"data": f"w{wave}-{i}"} for i in range(20)])
            await attacks
        took = time.monotonic() - t0
        got = [[e.id for e in await collect(es, 200, timeout=20)] for es in readers]
        for es in readers:
            es.close()
        return got, published, refused, took

    got, published, refused, took = asyncio.run(run())
    print(f"1000 bad-token requests and 200 events in {took:.1f} s: refused {refused}")
    # 403: the other topic's and the publish-only tokens (valid, without the right)
    assert refused == {401: 667, 403: 333}
    assert all(ids == published for ids in got), "a reader lost or repeated events"
    answers = asyncio.run(client.request("GET", relay.url + "/metrics")).body.decode()
    assert 'status="5' not in answers
