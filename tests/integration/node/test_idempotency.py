"""Publishing exactly once with an Idempotency-Key, on real relays, varnishd and Redis.

A relay is made to die after its write landed and before its answer left by giving Redis a
replica that is frozen (SIGSTOP): the relays wait for one replica (``WAIT 1``), so the write is
in the stream while the relay's answer waits, for as long as the test needs. The test sees
the entry (XLEN), SIGKILLs the relay and thaws the replica: exactly the publish whose
publisher never heard back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.harness.edge import Edge
from relay.harness.processes import wait_closed
from relay.harness.servers import RedisServer, Relay, metrics
from relay.storage import idempotency
from relay.web import client
from tests.integration.conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOLD_MS = 20_000  # how long a relay waits for the frozen replica: longer than any test step


def post(url: str, topic: str, body: Any, key: str | None = None,
         timeout: float = 30) -> client.Response:
    headers = {**AUTH, **({"Idempotency-Key": key} if key is not None else {})}
    return asyncio.run(client.request("POST", f"{url}/v1/streams/{topic}/events",
                                      headers=headers, json_body=body, timeout=timeout))


def entries(redis: RedisServer, topic: str) -> list[str]:
    """The ids in the topic's stream."""
    out = redis.cli("XRANGE", f"ssedge:{{{topic}}}", "-", "+")
    return [line for line in out.split("\n") if line.count("-") == 1 and line[0].isdigit()]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not after {timeout} s: {what}")
        time.sleep(0.02)


@pytest.fixture
def replica(tmp_path: Path, redis_server: RedisServer) -> Iterator[RedisServer]:
    """A replica of the test's Redis, in sync; thawed and stopped at the end."""
    server = RedisServer(tmp_path / "replica")
    try:
        redis_server.cli("CONFIG", "SET", "repl-diskless-sync-delay", "0")  # Redis waits 5 s
        server.cli("REPLICAOF", "127.0.0.1", str(redis_server.port))
        wait_for(lambda: "master_link_status:up" in server.cli("INFO", "replication"), 10,
                 "replica in sync")
        yield server
    finally:
        assert server.process is not None
        with contextlib.suppress(ProcessLookupError):
            server.process.send_signal(signal.SIGCONT)
        server.stop()


@contextlib.contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.process.send_signal(signal.SIGCONT)


def test_the_same_key_twice_on_one_relay_and_on_another_writes_once(
    start_relay: Callable[..., Relay], redis_server: RedisServer,
) -> None:
    a, b = start_relay(), start_relay()
    key = str(uuid.uuid4())
    first = post(a.url, "once", {"data": "hello", "event": "greeting"}, key)
    assert first.status == 201 and "idempotent-replayed" not in first.headers
    again = post(a.url, "once", {"event": "greeting", "data": "hello"}, key)  # other JSON order
    elsewhere = post(b.url, "once", {"data": "hello", "event": "greeting"}, key)
    for retry in (again, elsewhere):
        assert retry.status == 201 and retry.body == first.body
        assert retry.headers["idempotent-replayed"] == "true"
    assert entries(redis_server, "once") == [first.json()["id"]]
    # a batch likewise: all its ids, once
    batch = [{"data": n} for n in range(3)]
    ids = post(b.url, "once", batch, "batch-1").json()["ids"]
    assert post(a.url, "once", batch, "batch-1").json() == {"ids": ids}
    assert entries(redis_server, "once") == [first.json()["id"], *ids]
    # the key is the topic's: another topic's same key is another publish
    assert post(a.url, "other", batch, "batch-1").json()["ids"] != ids
    # without a key: written each time, as before
    assert post(a.url, "once", {"data": 1}).body != post(a.url, "once", {"data": 1}).body
    assert len(entries(redis_server, "once")) == 6
    # the key's memory is bounded by its expiry
    ttl = int(redis_server.cli("TTL", idempotency.redis_key("once", "batch-1")))
    assert 86_000 < ttl <= 86_400


def test_a_reused_key_with_other_events_is_422_and_writes_nothing(
    start_relay: Callable[..., Relay], redis_server: RedisServer,
) -> None:
    relay = start_relay(idempotency_ttl_s=60)
    assert post(relay.url, "reuse", {"data": "a"}, "k").status == 201
    for body in ({"data": "b"}, {"data": "a", "event": "x"}, [{"data": "a"}]):
        response = post(relay.url, "reuse", body, "k")
        assert response.status == 422, response.body
        assert response.json()["error"] == "unprocessable"
        assert "Idempotency-Key" in response.json()["message"]
    assert len(entries(redis_server, "reuse")) == 1
    assert 0 < int(redis_server.cli("TTL", idempotency.redis_key("reuse", "k"))) <= 60


@pytest.mark.parametrize("key", ["", " ", "k" * 256, "é", "a\tb", "a\x01b"])
def test_bad_keys_are_400_and_write_nothing(relay: Relay, redis_server: RedisServer,
                                            key: str) -> None:
    response = post(relay.url, "bad-key", {"data": 1}, key)
    assert response.status == 400
    if key != "a\x01b":  # a control character: Granian refuses the request itself, bare
        assert response.json()["error"] == "bad_request"
    assert entries(redis_server, "bad-key") == []


def test_twenty_concurrent_retries_through_the_edge_write_once(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_edge: Callable[..., Edge], redis_server: RedisServer,
) -> None:
    a, b = start_relay(), start_relay()
    edge = start_edge([a, b], start_replay())

    async def storm(body: Any, key: str) -> list[client.Response]:
        return list(await asyncio.gather(*(
            client.request("POST", f"{edge.url}/v1/streams/storm/events",
                           headers={**AUTH, "Idempotency-Key": key}, json_body=body)
            for _ in range(20))))

    for body in ({"data": "one"}, [{"data": n} for n in range(5)]):
        responses = asyncio.run(storm(body, str(uuid.uuid4())))
        assert {r.status for r in responses} == {201}
        assert len({r.body for r in responses}) == 1, "the same answer to every request"
        assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 19
    assert len(entries(redis_server, "storm")) == 1 + 5
    ma, mb = asyncio.run(metrics(a.url)), asyncio.run(metrics(b.url))
    assert ma["ssedge_publish_requests_total"] > 0 and mb["ssedge_publish_requests_total"] > 0
    assert ma["ssedge_published_total"] + mb["ssedge_published_total"] == 6
    assert ma["ssedge_publish_replays_total"] + mb["ssedge_publish_replays_total"] == 38
    # a keyless publish's body is not kept at the edge, but streamed: up to the relay's limit
    big = [{"data": "x" * 1000} for _ in range(1000)]
    assert len(json.dumps(big)) < 1024 * 1024
    assert len(post(edge.url, "storm", big).json()["ids"]) == 1000


@pytest.mark.parametrize("path", ["direct", "edge"])
def test_a_relay_killed_after_the_write_before_its_answer_the_retry_writes_nothing(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_edge: Callable[..., Edge], redis_server: RedisServer, replica: RedisServer,
    path: str,
) -> None:
    a = start_relay(publish_replicas=1, publish_replica_timeout_ms=HOLD_MS)
    b = start_relay(publish_replicas=1, publish_replica_timeout_ms=HOLD_MS)
    edge = start_edge([a, b], start_replay()) if path == "edge" else None
    if edge is not None:
        edge.set_health("relay_2", "sick")  # the first try goes to A
    body = [{"data": "once"}, {"data": "only once", "event": "note"}]
    key = str(uuid.uuid4())

    async def run() -> None:
        first = asyncio.ensure_future(client.request(
            "POST", f"{(edge or a).url}/v1/streams/held/events",
            headers={**AUTH, "Idempotency-Key": key}, json_body=body, timeout=30))
        with frozen(replica):
            await asyncio.to_thread(wait_for, lambda: len(entries(redis_server, "held")) == 2,
                                    10, "the write landed")
            assert not first.done(), "A waits for the replica: its answer has not left"
            if edge is not None:
                edge.set_health("relay_2", "auto")
            a.stop(signal.SIGKILL)
        if edge is None:
            # the publisher hears nothing back and sends the same request to another relay
            with pytest.raises((OSError, EOFError, client.ProtocolError)):
                await first
            answer = await client.request("POST", f"{b.url}/v1/streams/held/events",
                                          headers={**AUTH, "Idempotency-Key": key},
                                          json_body=body, timeout=30)
        else:
            answer = await first  # the edge retried on B with the kept body and key
        assert answer.status == 201, answer.body
        assert answer.headers["idempotent-replayed"] == "true"
        assert answer.json() == {"ids": entries(redis_server, "held")}

    asyncio.run(run())
    assert len(entries(redis_server, "held")) == 2


def test_a_replay_is_acknowledged_only_once_a_replica_holds_the_first_events(
    start_relay: Callable[..., Relay], redis_server: RedisServer, replica: RedisServer,
) -> None:
    a = start_relay(publish_replicas=1, publish_replica_timeout_ms=300)
    b = start_relay(publish_replicas=1, publish_replica_timeout_ms=300)
    with frozen(replica):
        first = post(a.url, "acked", {"data": 1}, "k")
        assert first.status == 503 and "not acknowledged" in first.json()["message"]
        # the retry, on a connection that wrote nothing, must not be told "safe" while the
        # replica lacks the events (a GET then WAIT on a fresh connection counted the frozen
        # replica as holding everything, here): the replay rewrites the key before its WAIT
        replay = post(b.url, "acked", {"data": 1}, "k")
        assert replay.status == 503, replay.body
    answer, _ = asyncio.run(client.publish(f"{b.url}/v1/streams/acked/events", {"data": 1},
                                           token=TOKEN, key="k", attempts=10, delay_max=0.2))
    assert answer.status == 201 and answer.headers["idempotent-replayed"] == "true"
    assert [answer.json()["id"]] == entries(redis_server, "acked")


def test_the_edge_does_not_retry_a_keyless_publish_a_dying_relay_took(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_edge: Callable[..., Edge], redis_server: RedisServer, replica: RedisServer,
) -> None:
    a = start_relay(publish_replicas=1, publish_replica_timeout_ms=HOLD_MS)
    b = start_relay(publish_replicas=1, publish_replica_timeout_ms=HOLD_MS)
    edge = start_edge([a, b], start_replay())
    edge.set_health("relay_2", "sick")

    async def run() -> client.Response:
        first = asyncio.ensure_future(client.request(
            "POST", f"{edge.url}/v1/streams/keyless/events", headers=AUTH,
            json_body={"data": "maybe"}, timeout=30))
        with frozen(replica):
            await asyncio.to_thread(wait_for, lambda: len(entries(redis_server, "keyless")) == 1,
                                    10, "the write landed")
            edge.set_health("relay_2", "auto")
            a.stop(signal.SIGKILL)
            return await first

    answer = asyncio.run(run())
    # the relay took it and died: it may be written, which the publisher is told
    assert answer.status == 502 and answer.headers["retry-after"] == "1"
    assert "Idempotency-Key" in json.loads(answer.body)["message"]
    time.sleep(0.5)
    assert len(entries(redis_server, "keyless")) == 1, "B was not given it"


def test_the_edge_retries_a_publish_a_dead_relay_refused_keyed_or_not(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_edge: Callable[..., Edge], redis_server: RedisServer,
) -> None:
    a, b = start_relay(), start_relay()
    edge = start_edge([a, b], start_replay())

    def retried() -> int:
        row = next(r for r in edge.admin.stat()
                   if r["pxname"] == "publishes" and r["svname"] == "BACKEND")
        return int(row["wretr"] or 0) + int(row["wredis"] or 0)

    before = retried()
    a.stop(signal.SIGKILL)  # refuses connections; the checks have not noticed yet
    # its workers gone too: a listening socket of a worker still exiting accepts a connection
    # and then resets it, which is a relay that took the request, not a refusal (seen once)
    wait_closed(a.port)
    # round robin: half of these meet A, whose refused connection sent nothing: each is
    # resent to B, with or without a key, and written once
    keyless = [post(edge.url, "refused", {"data": n}) for n in range(4)]
    keyed = [post(edge.url, "refused", {"data": n}, str(uuid.uuid4())) for n in range(4)]
    assert edge.healthy()["relay_1"], "the checks had not noticed: every try met A or B"
    assert all(r.status == 201 and "idempotent-replayed" not in r.headers
               for r in keyless + keyed), [r.status for r in keyless + keyed]
    assert retried() - before >= 2, "publishes were refused by A, then resent to B"
    assert len(entries(redis_server, "refused")) == 8
