"""``ssedge ingest`` against real upstream SSE servers that drop their clients at random, and a
real Redis: every upstream event lands exactly once, in its upstream's order, across drops,
a SIGKILLed and restarted ingest, and two ingest processes of the same upstream."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import redis

from relay.devstack.demo import DemoUpstream
from relay.harness.processes import free_port
from relay.harness.servers import IngestProcess, RedisServer, Relay
from relay.protocol.wire import Event
from relay.web import client
from tests.integration.upstreams import Upstreams, url

Entry = dict[str, str]


def stored(server: RedisServer, topic: str) -> list[Entry]:
    with redis.Redis.from_url(server.url, decode_responses=True) as r:
        return [{"id": i, **fields} for i, fields in r.xrange(f"ssedge:{{{topic}}}")]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def upstream_ids(entries: list[Entry], name: str) -> list[str]:
    return [e["i"] for e in entries if e["o"] == name]


def settle(server: RedisServer, topic: str, expected: int, timeout: float = 30) -> list[Entry]:
    """The topic once it holds ``expected`` entries and nothing more arrives for a moment."""
    wait_until(lambda: len(stored(server, topic)) >= expected, timeout, f"{expected} entries")
    time.sleep(0.5)  # a duplicate would show up here
    return stored(server, topic)


def assert_exactly_once_in_order(entries: list[Entry], name: str, up: DemoUpstream) -> None:
    got = upstream_ids(entries, name)
    assert len(got) == len(set(got)), f"{name}: duplicates"
    assert got == up.ids, f"{name}: {len(got)} of {len(up.ids)}, or out of order"


FAST = {"ingest_retry_ms": 50, "ingest_backoff_max_s": 0.5, "ingest_lease_ms": 600}


def test_two_flaky_upstreams_land_every_event_once_in_order(
    upstreams: Upstreams, start_ingest: Callable[..., IngestProcess],
    redis_server: RedisServer, start_relay: Callable[..., Relay],
) -> None:
    a = upstreams.demo(prefix="A", count=200, interval=0.004, drop_every=8, retry_ms=20,
                       replay_all=True, seed=1)
    b = upstreams.demo(prefix="B", count=200, interval=0.005, drop_every=8, retry_ms=20,
                       replay_all=True, seed=2)
    ingest = start_ingest("--topic", "fan", "--from", f"a={url(a)}", "--from", f"b={url(b)}",
                          **FAST)
    entries = settle(redis_server, "fan", 400)
    assert len(entries) == 400
    assert_exactly_once_in_order(entries, "a", a)
    assert_exactly_once_in_order(entries, "b", b)
    # they did drop, sometimes mid-frame, and every reconnect resumed by id
    for up in (a, b):
        assert up.connections >= 10
        assert all(up.resumed_from[1:]), "a reconnect without Last-Event-ID"
    assert ingest.metric("events_total", "a") == 200
    assert ingest.metric("reconnects_total", "b") >= 9
    assert ingest.metric("duplicates_total", "a") == 0
    # data and type are the upstream's, byte for byte; a client of the relay sees its id
    first = next(e for e in entries if e["i"] == a.ids[2])
    frame = a.frames[a.ids[2]].decode()
    assert f"event: {first.get('e', 'message')}\n" in frame
    assert "".join(f"data: {line}\n" for line in first["d"].split("\n")) in frame
    relay = start_relay()

    async def read() -> list[Event]:
        async with await client.stream(f"{relay.url}/v1/streams/fan/events?since=earliest",
                                       extra_fields=True) as es:
            events: list[Event] = []
            while len(events) < 3:
                events += [e for e in await es.read_chunk() if isinstance(e, Event)]
            return events

    seen = asyncio.run(asyncio.wait_for(read(), 10))
    assert seen[0].id == entries[0]["id"]
    assert dict(seen[0].extra) == {"upstream": entries[0]["o"], "upstream-id": entries[0]["i"]}


def test_a_sigkilled_ingest_restarts_where_it_stopped(
    upstreams: Upstreams, start_ingest: Callable[..., IngestProcess],
    redis_server: RedisServer,
) -> None:
    up = upstreams.demo(prefix="R", count=300, interval=0.008, drop_every=25, retry_ms=20,
                        replay_all=True, seed=3)
    args = ("--topic", "restart", "--from", f"r={url(up)}")
    first = start_ingest(*args, **FAST)
    wait_until(lambda: len(stored(redis_server, "restart")) >= 60, 20, "60 entries")
    first.stop(signal.SIGKILL)
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as r:
        cursor = r.hget("ssedge:{restart}:ingest", "r")
    written = stored(redis_server, "restart")
    assert written[-1]["i"] == cursor, "the cursor is the last event written, exactly"
    connections = up.connections
    time.sleep(0.3)  # the upstream goes on meanwhile
    start_ingest(*args, **FAST)  # takes the lease once the dead one's expires
    entries = settle(redis_server, "restart", 300)
    assert_exactly_once_in_order(entries, "r", up)
    # the restart resumed after the cursor (the dead one's last request may still be counted)
    assert cursor in up.resumed_from[connections:connections + 2]


def test_two_ingest_processes_of_one_upstream_write_each_event_once(
    upstreams: Upstreams, start_ingest: Callable[..., IngestProcess],
    redis_server: RedisServer,
) -> None:
    up = upstreams.demo(prefix="D", count=300, interval=0.008, drop_every=15, retry_ms=20,
                        replay_all=True, seed=4)
    args = ("--topic", "pair", "--from", f"d={url(up)}")
    one, two = start_ingest(*args, **FAST), start_ingest(*args, **FAST)
    wait_until(lambda: len(stored(redis_server, "pair")) >= 80, 20, "80 entries")
    active = [p for p in (one, two) if p.metric("active", "d") == 1]
    assert len(active) == 1, "exactly one process follows the upstream"
    standby = two if active[0] is one else one
    assert standby.metric("up", "d") == 0 and standby.metric("events_total", "d") == 0
    active[0].stop(signal.SIGKILL)  # mid-stream, holding the lease
    entries = settle(redis_server, "pair", 300)
    assert_exactly_once_in_order(entries, "d", up)
    assert standby.metric("active", "d") == 1 and standby.metric("leases_total", "d") == 1
    assert 0 < standby.metric("events_total", "d") <= 300 - 80


GARBAGE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\r\n"
    b"\xef\xbb\xbfretry: soon\n"  # BOM, then a retry that is not digits: ignored
    b"\x00\xff garbage line\r\n: a comment\n"
    b"data: one\nid: g1\n\n"
    b"bogus: field\ndata: " + b"x" * 5000 + b"\nid: g2\n\n"  # over max_body_bytes
    b"event: " + b"t" * 100 + b"\ndata: bad type\nid: g3\n\n"  # type over 64 characters
    b"data: \xc3\x28 not utf-8\rdata: cr line\r\nid: g4\n\n"
    b"data: no end of event"
)
ANSWERS = {
    "nocontent": [b"HTTP/1.1 204 No Content\r\n\r\n"],
    # a canned server answers one request per connection: it says so (Connection: close), or
    # a client keeping the connection alive would wait on it for the next answer
    "html": [b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n"
             b"Connection: close\r\n\r\nhi"],
    "flaky": [b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n"
              b"Connection: close\r\n\r\nbusy"] * 2 + [
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
        b"id: f1\ndata: after two 503s\n\n"],
    "garbage": [GARBAGE, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"],
    "nothttp": [b"SSH-2.0-OpenSSH_9.2\r\n\r\n"],
}


def test_bad_upstreams_are_logged_counted_and_never_crash(
    upstreams: Upstreams, start_ingest: Callable[..., IngestProcess],
    redis_server: RedisServer, tmp_path: Path,
) -> None:
    servers = {name: upstreams.canned(answers, hold_s=5) for name, answers in ANSWERS.items()}
    lines = [f'{{ name = "{name}", url = "{s.url}" }}' for name, s in servers.items()]
    lines.append(f'{{ name = "refused", url = "http://127.0.0.1:{free_port()}/events" }}')
    settings_file = tmp_path / "ingest.toml"
    settings_file.write_text(f'[[ingest]]\ntopic = "bad"\nfrom = [{", ".join(lines)}]\n')
    ingest = start_ingest(ingest_file=settings_file, max_body_bytes=1024, ingest_idle_timeout_s=1,
                          **FAST)

    def counted() -> bool:
        return (ingest.metric("events_total", "flaky") == 1
                and ingest.metric("errors_total", "html", kind="content_type") >= 2
                and ingest.metric("errors_total", "garbage", kind="idle") >= 1
                and ingest.metric("errors_total", "nothttp", kind="protocol") >= 2
                and ingest.metric("errors_total", "refused", kind="connect") >= 2
                # the 200 after two 503s is resent in full after an idle reconnect
                and ingest.metric("duplicates_total", "flaky") >= 1)

    wait_until(counted, 20, "every failure counted")
    assert ingest.alive
    # 204: given up for good, after exactly one connection
    assert ingest.metric("stopped", "nocontent") == 1
    assert ingest.metric("errors_total", "nocontent", kind="no_content") == 1
    assert servers["nocontent"].connections == 1
    assert ingest.metric("errors_total", "flaky", kind="status") == 2
    # garbage: what the decoder makes of it; the oversize and the bad type are rejected,
    # and the cursor moved past them
    entries = stored(redis_server, "bad")
    got = {e["i"]: e for e in entries if e["o"] == "garbage"}
    assert sorted(got) == ["g1", "g4"]
    assert got["g1"]["d"] == "one"
    assert got["g4"]["d"] == "\ufffd( not utf-8\ncr line"
    assert ingest.metric("rejected_total", "garbage") == 2
    assert b"Last-Event-ID: g4" in servers["garbage"].requests[1]
    # down and since when, for the one that never answered
    assert ingest.metric("up", "refused") == 0
    assert ingest.metric("down_since_timestamp_seconds", "refused") > time.time() - 60
    response = asyncio.run(client.request("GET", ingest.url + "/readyz"))
    assert response.status == 200
    log = ingest.log.read_text()
    assert "upstream refused of topic bad down since" in log and "204 No Content" in log
    assert "Traceback" not in log


def test_an_event_without_an_id_after_a_resume_keeps_the_cursor(
    upstreams: Upstreams, start_ingest: Callable[..., IngestProcess],
    redis_server: RedisServer,
) -> None:
    """As a browser's EventSource keeps its last event id across connections: an upstream
    that resumes with an event carrying no ``id:`` must not erase the resume position."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
    upstream = upstreams.canned([
        head + b"id: u1\ndata: first\n\n",  # then the connection ends
        head + b"data: second, no id\n\n",  # a resume after u1: this event has none
        head + b"data: third\n\n",
        head,
    ])
    ingest = start_ingest("--topic", "keep", "--from", f"k={upstream.url}", **FAST)
    wait_until(lambda: len(stored(redis_server, "keep")) >= 3, 15, "three events")
    wait_until(lambda: upstream.connections >= 4, 15, "a fourth connection")
    assert [e["d"] for e in stored(redis_server, "keep")] == ["first", "second, no id", "third"]
    # every resume after the first event named it, as a browser would
    for request in upstream.requests[1:4]:
        assert b"Last-Event-ID: u1" in request, request
    assert ingest.alive
