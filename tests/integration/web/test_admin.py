"""The operator API on real relays sharing one Redis: the audience of each topic across three
relays (one of them with two workers) while clients come and go; revocations that end a
token's streams on every relay within a second and refuse it afterwards (403); disconnects
by topic and by subject; drain from the API; the credential; the access log's client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from relay.harness.servers import RedisServer, Relay, publish
from relay.protocol.wire import Event
from relay.web import client
from relay.web.client import EventStream
from tests.integration.conftest import TOKEN
from tests.integration.sse import subscribe

SECRET = "admin-test-secret-" + "x" * 30
ADMIN = "admin-test-token"
PERIOD_S = 0.5
SETTINGS = {"admin_token": ADMIN, "audience_period_s": PERIOD_S, "heartbeat_s": 0.5,
            "private_topics": "private-*", "jwt_secret": SECRET, "jwt_leeway_s": 0,
            "revocation_reload_s": 2.0, "topic_linger_s": 0}


def reader_token(jti: str, sub: str, topics: str = "private-*", ttl: float = 600) -> str:
    return jwt.encode({"ssedge": {"subscribe": [topics]}, "exp": int(time.time() + ttl),
                       "jti": jti, "sub": sub}, SECRET, algorithm="HS256")


def admin_headers(token: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(method: str, url: str, body: Any = None, token: str = ADMIN) -> client.Response:
    return await client.request(method, url, headers=admin_headers(token) if token else None,
                                json_body=body)


class Reader:
    """One open stream read in the background: its events, and when it ended."""

    def __init__(self, es: EventStream) -> None:
        self.es = es
        self.events: list[Event] = list(getattr(es, "early", []))
        self.ended_at: float | None = None
        self.task = asyncio.ensure_future(self._read())
        _opened.append(self)

    async def _read(self) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while not self.es.ended:
                self.events.extend(e for e in await self.es.read_chunk()
                                   if isinstance(e, Event))
        self.ended_at = time.monotonic()

    async def close(self) -> None:
        self.es.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


_opened: list[Reader] = []


async def close_all() -> None:
    """Every stream a test opened, closed (ended ones too: their sockets)."""
    while _opened:
        await _opened.pop().close()


async def open_reader(url: str, token: str | None = None) -> Reader:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return Reader(await subscribe(url, headers=headers))


async def closing(work: Any) -> Any:
    try:
        return await work
    finally:
        await close_all()


async def wait_for(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.fixture
def relays(start_relay: Callable[..., Relay]) -> list[Relay]:
    return [start_relay(workers=2, **SETTINGS), start_relay(**SETTINGS),
            start_relay(**SETTINGS)]


def stream_url(relay: Relay, topic: str) -> str:
    return f"{relay.url}/v1/streams/{topic}/events"


async def audience(relay: Relay) -> dict[str, int]:
    response = await call("GET", f"{relay.url}/v1/admin/audience?limit=100")
    assert response.status == 200, response.body
    return {row["topic"]: row["audience"] for row in response.json()["topics"]}


async def settled(relays: list[Relay], expected: dict[str, int]) -> None:
    """Every relay's answer is ``expected``, and stays so for two periods (steady state)."""
    async def same() -> bool:
        return all([await audience(r) == expected for r in relays])

    await wait_for(same, 10, f"audience {expected}")
    await asyncio.sleep(2 * PERIOD_S)
    for relay in relays:
        assert await audience(relay) == expected


def test_audience_is_exact_across_relays_as_clients_come_and_go(relays: list[Relay]) -> None:
    r1, r2, r3 = relays

    async def run() -> None:
        readers: dict[str, list[Reader]] = {"a": [], "b": [], "multi": []}
        for relay, count in ((r1, 5), (r2, 2), (r3, 1)):
            for _ in range(count):
                readers["a"].append(await open_reader(stream_url(relay, "aud.a")))
        for _ in range(4):
            readers["b"].append(await open_reader(stream_url(r3, "aud.b")))
        # one stream on both topics counts once on each
        readers["multi"].append(await open_reader(
            f"{r2.url}/v1/streams/events?topic=aud.a&topic=aud.b"))
        await settled(relays, {"aud.a": 9, "aud.b": 5})
        # the topic's metadata says the same, on any relay
        for relay in relays:
            meta = await client.request("GET", f"{relay.url}/v1/streams/aud.a")
            assert meta.json()["audience"] == 9
        # some leave, some come
        for reader in readers["a"][:4] + readers["b"][:1]:
            await reader.close()
        late = [await open_reader(stream_url(r2, "aud.c")) for _ in range(3)]
        await settled(relays, {"aud.a": 5, "aud.b": 4, "aud.c": 3})
        response = await call("GET", f"{r3.url}/v1/admin/audience?limit=2")
        body = response.json()
        assert [row["topic"] for row in body["topics"]] == ["aud.a", "aud.b"]
        assert body["streams"] == 12 and body["topic_count"] == 3
        assert body["processes"] == 4  # r1's two workers, r2, r3
        # everyone leaves: back to nothing
        for reader in [*readers["a"][4:], *readers["b"][1:], *readers["multi"], *late]:
            await reader.close()
        await settled(relays, {})
        meta = await client.request("GET", f"{r1.url}/v1/streams/aud.a")
        assert meta.json()["audience"] == 0

    asyncio.run(closing(run()))


def test_a_relay_that_dies_leaves_the_count_within_a_few_periods(
        relays: list[Relay]) -> None:
    r1, r2, r3 = relays

    async def run() -> None:
        readers = [await open_reader(stream_url(r, "aud.gone")) for r in (r2, r3, r3)]
        await settled([r1], {"aud.gone": 3})
        r3.stop(signal.SIGKILL)  # no goodbye: its counts expire (3 periods and a second)
        killed = time.monotonic()

        async def gone() -> bool:
            return await audience(r1) == {"aud.gone": 1}

        await wait_for(gone, 10, "the dead relay's count to go")
        assert time.monotonic() - killed < 3 * PERIOD_S + 1 + 1
        for reader in readers:
            await reader.close()

    asyncio.run(closing(run()))


def test_revoked_tokens_end_on_every_relay_within_a_second_and_are_refused(
        relays: list[Relay]) -> None:
    r1, r2, r3 = relays
    topic = "private-rev"

    async def run() -> None:
        alice1 = reader_token("t-alice-1", "alice")
        alice2 = reader_token("t-alice-2", "alice")
        bob = reader_token("t-bob", "bob")
        first = [await open_reader(stream_url(r, topic), alice1) for r in relays]
        second = await open_reader(stream_url(r1, topic), alice2)
        bobs = [await open_reader(stream_url(r, topic), bob) for r in relays]
        # a stream on several topics is found by its token too
        multi = await open_reader(f"{r2.url}/v1/streams/events?topic={topic}&topic=pub",
                                  alice1)
        await publish(r1.url, TOKEN, topic, [{"data": "before"}])
        for reader in [*first, second, *bobs, multi]:
            await wait_for(lambda r=reader: any(e.data == "before" for e in r.events), 5,
                           "the first event")

        # -- by jti: only that token's streams end, on every relay, told why
        ordered = time.monotonic()
        response = await call("POST", f"{r3.url}/v1/admin/revocations",
                              {"jti": "t-alice-1", "until": time.time() + 60,
                               "reason": "leaked"})
        assert response.status == 201, response.body
        assert response.json()["revocation"] == {"jti": "t-alice-1",
                                                 "until": pytest.approx(time.time() + 60, abs=5),
                                                 "reason": "leaked"}
        for reader in [*first, multi]:
            await wait_for(lambda r=reader: r.ended_at is not None, 1.0 + 0.5,
                           "the revoked stream to end")
            assert reader.ended_at is not None and reader.ended_at - ordered < 1.0
            told = [e for e in reader.events if e.event == "ssedge.revoked"]
            assert len(told) == 1 and json.loads(told[0].data)["reason"] == "leaked"
            assert json.loads(told[0].data)["jti"] == "t-alice-1"
            assert reader.events[-1].event == "ssedge.revoked"
        assert second.ended_at is None and all(b.ended_at is None for b in bobs)
        # its reconnect is refused for good, naming the revocation, on every relay
        for relay in relays:
            es = await client.stream(stream_url(relay, topic),
                                     headers={"Authorization": f"Bearer {alice1}"})
            assert es.response.status == 403, es.response.body
            answer = json.loads(es.response.body)
            assert answer["error"] == "revoked"
            assert answer["revocation"]["jti"] == "t-alice-1"
            meta = await client.request("GET", f"{relay.url}/v1/streams/{topic}",
                                        headers={"Authorization": f"Bearer {alice1}"})
            assert meta.status == 403
        # the others still get events
        await publish(r1.url, TOKEN, topic, [{"data": "after"}])
        for reader in [second, *bobs]:
            await wait_for(lambda r=reader: any(e.data == "after" for e in r.events), 5,
                           "an event after the revocation")

        # -- by subject: every token of alice
        ordered = time.monotonic()
        response = await call("POST", f"{r2.url}/v1/admin/revocations",
                              {"sub": "alice", "until": time.time() + 60})
        assert response.status == 201
        await wait_for(lambda: second.ended_at is not None, 1.5, "alice's other token")
        assert second.ended_at is not None and second.ended_at - ordered < 1.0
        assert all(b.ended_at is None for b in bobs)
        fresh = reader_token("t-alice-3", "alice")
        es = await client.stream(stream_url(r3, topic),
                                 headers={"Authorization": f"Bearer {fresh}"})
        assert es.response.status == 403 and json.loads(es.response.body)["revocation"] == {
            "sub": "alice", "until": pytest.approx(time.time() + 60, abs=5), "reason": ""}

        # listed; kept in Redis: a relay started afterwards refuses the token from the start
        listed = (await call("GET", f"{r1.url}/v1/admin/revocations")).json()["revocations"]
        assert {r.get("jti") or r.get("sub") for r in listed} == {"t-alice-1", "alice"}
        await asyncio.to_thread(r3.stop)
        await asyncio.to_thread(r3.start)
        es = await client.stream(stream_url(r3, topic),
                                 headers={"Authorization": f"Bearer {alice2}"})
        assert es.response.status == 403
        # lifted: served again (each relay forgets it at its next reload)
        response = await call("DELETE", f"{r1.url}/v1/admin/revocations?sub=alice")
        assert response.json()["lifted"] is True

        async def served() -> bool:
            es = await client.stream(stream_url(r2, topic),
                                     headers={"Authorization": f"Bearer {alice2}"})
            es.close()
            return es.response.status == 200

        await wait_for(served, 2 * SETTINGS["revocation_reload_s"] + 2, "the lifted token")
        for reader in bobs:
            await reader.close()

    asyncio.run(closing(run()))


def test_disconnect_by_topic_and_by_subject_on_every_relay(relays: list[Relay]) -> None:
    r1, r2, r3 = relays

    async def run() -> None:
        public = [await open_reader(stream_url(r, "disc.pub")) for r in relays]
        other = await open_reader(stream_url(r1, "disc.other"))
        carol = reader_token("t-carol", "carol")
        dave = reader_token("t-dave", "dave")
        carols = [await open_reader(stream_url(r, "private-disc"), carol) for r in relays]
        daves = [await open_reader(stream_url(r, "private-disc"), dave) for r in relays]

        ordered = time.monotonic()
        response = await call("POST", f"{r2.url}/v1/admin/disconnect", {"topic": "disc.pub"})
        assert response.status == 202, response.body
        for reader in public:
            await wait_for(lambda r=reader: r.ended_at is not None, 1.5, "the topic's streams")
            assert reader.ended_at is not None and reader.ended_at - ordered < 1.0
        assert other.ended_at is None
        # a disconnected client comes back as before
        again = await open_reader(stream_url(r3, "disc.pub"))

        ordered = time.monotonic()
        response = await call("POST", f"{r1.url}/v1/admin/disconnect", {"sub": "carol"})
        assert response.status == 202
        for reader in carols:
            await wait_for(lambda r=reader: r.ended_at is not None, 1.5, "carol's streams")
            assert reader.ended_at is not None and reader.ended_at - ordered < 1.0
            assert not any(e.event == "ssedge.revoked" for e in reader.events)
        assert all(d.ended_at is None for d in daves)
        back = await open_reader(stream_url(r2, "private-disc"), carol)  # not revoked
        for reader in [other, again, back, *daves]:
            await reader.close()

    asyncio.run(closing(run()))


def test_the_operator_api_needs_its_credential_and_is_off_without_one(
        start_relay: Callable[..., Relay]) -> None:
    on = start_relay(admin_token=ADMIN)
    off = start_relay()

    async def run() -> None:
        for path, method, body in (("audience", "GET", None),
                                   ("revocations", "GET", None),
                                   ("revocations", "POST", {"jti": "x", "until": 2e9}),
                                   ("disconnect", "POST", {"topic": "t"}),
                                   ("drain", "POST", None)):
            url = f"{on.url}/v1/admin/{path}"
            for token in ("", "wrong", TOKEN):  # none, wrong, the publish token
                response = await call(method, url, body, token=token)
                assert response.status == 401, (path, token, response.body)
                assert response.json()["error"] == "unauthorized"
            response = await call(method, f"{off.url}/v1/admin/{path}", body)
            assert response.status == 404, (path, response.body)
        bad = await call("POST", f"{on.url}/v1/admin/revocations", {"jti": "x", "until": 5})
        assert bad.status == 422
        both = await call("POST", f"{on.url}/v1/admin/disconnect", {"topic": "a", "sub": "b"})
        assert both.status == 422
        assert (await call("GET", f"{on.url}/v1/admin/audience?limit=0")).status == 400
        assert (await call("GET", f"{on.url}/v1/admin/drain")).status == 405

    asyncio.run(closing(run()))


def test_drain_from_the_api_stops_the_node_as_sigterm_does(
        start_relay: Callable[..., Relay]) -> None:
    relay = start_relay(admin_token=ADMIN, workers=2, drain_s=1, drain_retry_ms=300)

    async def run() -> None:
        readers = [await open_reader(stream_url(relay, "drain.me")) for _ in range(4)]
        response = await call("POST", f"{relay.url}/v1/admin/drain")
        assert response.status == 202 and response.json()["drain_s"] == 1
        # the signal reaches every worker through Granian's main process: readiness turns
        # red on each as it does (a request may meet a worker that has not heard yet)
        for _ in range(40):
            ready = await client.request("GET", f"{relay.url}/readyz")
            if ready.status == 503:
                break
            await asyncio.sleep(0.05)
        assert ready.status == 503
        for reader in readers:
            await wait_for(lambda r=reader: r.ended_at is not None, 5, "the drained stream")
            assert reader.es.decoder.retry == 300  # asked to come back soon, elsewhere

    asyncio.run(closing(run()))
    relay.process.wait(timeout=10)


def test_ssedge_top_revoke_disconnect_commands(relays: list[Relay], tmp_path: Path) -> None:
    r1, r2, r3 = relays
    env = {"SSEDGE_ADMIN_URL": r2.url, "SSEDGE_ADMIN_TOKEN": ADMIN, "PATH": "/usr/bin:/bin"}

    def ssedge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "relay", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=30)

    async def run() -> None:
        readers = [await open_reader(stream_url(r, "top.x")) for r in (r1, r3, r3)]
        readers.append(await open_reader(stream_url(r1, "top.y")))
        erin = reader_token("t-erin", "erin")
        erins = await open_reader(stream_url(r3, "private-top"), erin)
        await settled([r2], {"top.x": 3, "top.y": 1, "private-top": 1})

        done = ssedge("top", "--once")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].startswith("5 streams on 3 topics")
        assert lines[3].split() == ["3", "top.x"]
        as_json = json.loads(ssedge("top", "--once", "--json", "--limit", "1").stdout)
        assert as_json["topics"] == [{"topic": "top.x", "audience": 3}]

        done = ssedge("disconnect", "--topic", "top.y")
        assert done.returncode == 0, done.stderr
        await wait_for(lambda: readers[3].ended_at is not None, 2, "top.y's stream")
        done = ssedge("revoke", "--jti", "t-erin", "--for", "5m", "--reason", "test")
        assert done.returncode == 0, done.stderr
        await wait_for(lambda: erins.ended_at is not None, 2, "erin's stream")
        assert "t-erin" in ssedge("revoke", "--list").stdout
        refused = ssedge("top", "--once", "--admin-token", "nope")
        assert refused.returncode == 1 and "401" in refused.stderr
        for reader in readers:
            await reader.close()

    asyncio.run(closing(run()))


def test_access_log_names_the_client_a_trusted_proxy_forwards(
        start_relay: Callable[..., Relay]) -> None:
    trusting = start_relay(access_log="true")
    wary = start_relay(access_log="true", trusted_proxies="10.0.0.0/8")

    async def run() -> None:
        for relay in (trusting, wary):
            await client.request("GET", f"{relay.url}/healthz",
                                 headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.7"})

    asyncio.run(closing(run()))

    def last_client(relay: Relay) -> str:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            lines = [ln for ln in relay.log.read_text().splitlines() if "GET /healthz 200" in ln]
            if lines:
                return lines[-1].rsplit(" ", 1)[1]
            time.sleep(0.1)
        raise AssertionError(relay.log.read_text()[-2000:])

    # loopback is trusted by default: the rightmost address that is not a trusted proxy
    assert last_client(trusting) == "198.51.100.7"
    assert last_client(wary) == "127.0.0.1"


def test_the_audience_costs_redis_one_command_per_period_whatever_the_streams(
        start_relay: Callable[..., Relay], redis_server: RedisServer) -> None:
    """Measured on Redis itself (INFO commandstats): the commands a relay process sends for
    its audience over a few seconds, with no stream and with 300 on 30 topics, settled."""
    relay = start_relay(admin_token=ADMIN, audience_period_s=PERIOD_S, heartbeat_s=5)

    def evals() -> int:
        stats = redis_server.cli("INFO", "commandstats")
        line = next((ln for ln in stats.splitlines() if ln.startswith("cmdstat_eval:")), "")
        return int(line.split("calls=")[1].split(",")[0]) if line else 0

    async def window() -> int:
        before = evals()
        await asyncio.sleep(4.0)
        return evals() - before

    async def run() -> tuple[int, int]:
        idle = await window()
        for i in range(300):
            await open_reader(stream_url(relay, f"cost.{i % 30}"))
        await settled([relay], {f"cost.{i}": 10 for i in range(30)})
        return idle, await window()

    idle, busy = asyncio.run(closing(run()))
    periods = 4.0 / PERIOD_S
    print(f"\naudience: {idle} commands in 4 s with no stream, {busy} with 300 streams "
          f"on 30 topics ({periods:.0f} periods)")
    assert periods - 2 <= idle <= periods + 2
    assert periods - 2 <= busy <= periods + 2
