"""Publishing and every bad input of the contract, on a real relay and Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from relay.harness.servers import RedisServer, Relay
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import collect, subscribe

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def call(method: str, url: str, **kwargs: Any) -> client.Response:
    return asyncio.run(client.request(method, url, **kwargs))


def assert_error(response: client.Response, status: int, code: str) -> None:
    assert response.status == status, response.body
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == code and body["message"]


def stream_length(redis: RedisServer, topic: str) -> int:
    return int(redis.cli("XLEN", f"ssedge:{{{topic}}}"))


def test_publish_one_and_many(relay: Relay, redis_server: RedisServer) -> None:
    url = f"{relay.url}/v1/streams/p/events"
    one = call("POST", url, headers=AUTH, json_body={"data": "hi", "event": "greeting"})
    assert one.status == 201 and one.json()["id"].count("-") == 1
    many = call("POST", url, headers=AUTH, json_body=[{"data": i} for i in range(5)])
    assert many.status == 201 and len(many.json()["ids"]) == 5
    entry = redis_server.cli("XRANGE", "ssedge:{p}", "-", "+", "COUNT", "1")
    assert entry.split("\n")[1:] == ["d", "hi", "e", "greeting"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {TOKEN}"}])
def test_missing_or_wrong_token_is_401_whatever_else_is_wrong(
    relay: Relay, redis_server: RedisServer, headers: dict[str, str]
) -> None:
    url = f"{relay.url}/v1/streams/p/events"
    for body in (b'{"data": 1}', b"not json", b"x" * (2 << 20)):
        assert_error(call("POST", url, headers=headers, body=body), 401, "unauthorized")
    assert_error(call("POST", f"{relay.url}/v1/streams/bad%20topic/events", headers=headers,
                      body=b"{}"), 400, "bad_request")
    assert stream_length(redis_server, "p") == 0


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"not json", 422, "unprocessable"),
    (b'{"data": 1', 422, "unprocessable"),
    (b"[]", 422, "unprocessable"),
    (b'{"event": "x"}', 422, "unprocessable"),
    (b'{"data": 1, "id": "1-0"}', 422, "unprocessable"),
    (b'{"data": 1, "event": "a\\nb"}', 422, "unprocessable"),
    (b'{"data": 1, "event": "a\\rb"}', 422, "unprocessable"),
    # a line break at the end too (a regex's `$` matches before a final \n)
    (b'{"data": 1, "event": "tick\\n"}', 422, "unprocessable"),
    (b'{"data": 1, "event": "tick\\r\\n"}', 422, "unprocessable"),
    (b'{"data": 1, "event": "\\ntick"}', 422, "unprocessable"),
    (b'{"data": 1, "event": ""}', 422, "unprocessable"),
    (b'{"data": 1, "event": "' + b"x" * 65 + b'"}', 422, "unprocessable"),
    (b'[{"data": 1}, {"data": 2, "event": "a\\nb"}]', 422, "unprocessable"),
    (b"[" + b",".join([b'{"data": 1}'] * 1001) + b"]", 413, "payload_too_large"),
    (b'{"data": "' + b"x" * (1 << 20) + b'"}', 413, "payload_too_large"),
])
def test_bad_bodies_publish_nothing(relay: Relay, redis_server: RedisServer, body: bytes,
                                    status: int, code: str) -> None:
    response = call("POST", f"{relay.url}/v1/streams/p/events", headers=AUTH, body=body)
    assert_error(response, status, code)
    assert stream_length(redis_server, "p") == 0


@pytest.mark.parametrize("path", [
    "/v1/streams/" + "x" * 129 + "/events",
    "/v1/streams/a%2Fb/events",
    "/v1/streams/a b/events",
    "/v1/streams/%C3%A9/events",
    "/v1/streams/" + "x" * 129,
])
def test_bad_topics_are_400(relay: Relay, path: str) -> None:
    assert_error(call("GET", relay.url + path.replace(" ", "%20")), 400, "bad_request")


@pytest.mark.parametrize("query,header", [
    ("", "12"),
    ("", "abc-1"),
    ("", "1-2-3"),
    ("", "18446744073709551616-0"),
    ("?last_event_id=1-x", ""),
    ("?since=yesterday", ""),
    ("?backfill=-1", ""),
    ("?backfill=abc", ""),
    ("?backfill=10001", ""),
])
def test_bad_stream_start_is_400(relay: Relay, query: str, header: str) -> None:
    headers = {"Last-Event-ID": header} if header else {}
    response = call("GET", f"{relay.url}/v1/streams/s/events{query}", headers=headers)
    assert_error(response, 400, "bad_request")


def test_empty_last_event_id_is_the_same_as_none(relay: Relay) -> None:
    async def run() -> None:
        url = f"{relay.url}/v1/streams/e/events"
        async with await subscribe(url, headers={"Last-Event-ID": ""}) as es:
            ids = (await client.request("POST", f"{relay.url}/v1/streams/e/events", headers=AUTH,
                                        json_body=[{"data": 1}])).json()["ids"]
            assert [e.id for e in await collect(es, 1, timeout=5)] == ids

    asyncio.run(run())


def test_injection_in_data_arrives_as_one_event(relay: Relay) -> None:
    data = "\n\nid: 9\n\ndata: x\r\nevent: evil\rretry: 1"

    async def run() -> None:
        async with await subscribe(f"{relay.url}/v1/streams/inj/events") as es:
            response = await client.request("POST", f"{relay.url}/v1/streams/inj/events",
                                            headers=AUTH, json_body={"data": data})
            got = await collect(es, 1, timeout=5)
            await asyncio.sleep(0.2)
            got += [e for e in await asyncio.wait_for(es.read_chunk(), 2)
                    if getattr(e, "data", None) is not None] if not es.ended else []
        assert len(got) == 1
        assert got[0].id == response.json()["id"]
        assert got[0].event == "message"
        assert got[0].data == data.replace("\r\n", "\n").replace("\r", "\n")

    asyncio.run(run())


def test_unknown_path_and_method(relay: Relay) -> None:
    assert_error(call("GET", f"{relay.url}/nope"), 404, "not_found")
    response = call("DELETE", f"{relay.url}/v1/streams/t/events")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, POST"


def test_a_keyless_publish_no_replica_confirmed_is_written_and_says_so_not_503(
    start_relay: Callable[..., Relay], redis_server: RedisServer,
) -> None:
    """Written whole and being delivered, but no replica confirmed it in time: a 503 would
    invite a resend, and a keyless resend writes the events twice. The answer is the ids,
    ``replicated: false`` and a warning (a keyed publish is still 503: its retry is safe)."""
    relay = start_relay(publish_replicas=1, publish_replica_timeout_ms=50)
    url = f"{relay.url}/v1/streams/unreplicated/events"
    response = call("POST", url, headers=AUTH, json_body=[{"data": 1}, {"data": 2}])
    assert response.status == 201, response.body
    answer = response.json()
    assert answer["replicated"] is False and "do not resend" in answer["warning"]
    assert response.headers["x-ssedge-replicated"] == "false"
    # MULTI/EXEC ran before WAIT: written whole, the ids are the stream's
    assert stream_length(redis_server, "unreplicated") == 2
    assert answer["ids"] == [i.split()[0] for i in redis_server.cli(
        "XRANGE", "ssedge:{unreplicated}", "-", "+").splitlines()[::3]]
    ok = start_relay(publish_replicas=0)
    response = call("POST", f"{ok.url}/v1/streams/unreplicated/events", headers=AUTH,
                    json_body={"data": 3})
    assert response.status == 201 and "replicated" not in response.json()


def test_a_publish_waits_for_the_primarys_replica_by_default(
    tmp_path: Path, start_relay: Callable[..., Relay], redis_server: RedisServer,
) -> None:
    """SSEDGE_PUBLISH_REPLICAS left at -1 waits for one replica where the primary has one:
    with its replica frozen, a publish is not confirmed (it waited for it); with the replica
    gone from the primary's INFO, it is not held up."""
    replica = RedisServer(tmp_path / "replica", replica_of=redis_server)
    try:
        deadline = time.monotonic() + 10
        while "state=online" not in redis_server.cli("INFO", "replication"):
            assert time.monotonic() < deadline, "the replica did not connect"
            time.sleep(0.05)
        relay = start_relay(publish_replica_timeout_ms=300)
        url = f"{relay.url}/v1/streams/waits/events"
        time.sleep(0.5)  # the relay's first look at the primary's replicas
        assert call("POST", url, headers=AUTH, json_body={"data": 1}).json().get(
            "replicated", True) is True
        assert replica.process is not None
        os.kill(replica.process.pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            response = call("POST", url, headers=AUTH, json_body={"data": 2})
            assert response.status == 201 and response.json()["replicated"] is False
            assert time.monotonic() - began >= 0.25  # it waited (WAIT 1 300)
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
    finally:
        replica.stop()
