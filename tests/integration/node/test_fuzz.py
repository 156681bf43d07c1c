"""Fuzzing a real relay and a real replay service over raw sockets (hypothesis).

Arbitrary methods, paths, topics, ids, query parameters, headers, tokens and bodies go to
every endpoint, well formed as HTTP (then the app must answer: a 4xx is a JSON error) or
not at all (then only the server's own answer). In every case: never a 5xx, the process stays
up, nothing is logged as an unexpected error. Arbitrary events published are read back from a
stream exactly as published. Example counts are bounded so the file takes well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.harness.servers import Relay, metrics
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import collect, subscribe

SECRET = "fuzz-secret-" + "x" * 30
SETTINGS: dict[str, Any] = {
    "private_topics": "private-*", "jwt_secret": SECRET, "jwt_leeway_s": 0,
    "cors_origin": "https://app.example", "max_body_bytes": 65536, "max_batch": 50,
    "heartbeat_s": 1, "topic_linger_s": 0,
}


def jwt_token(claims: dict[str, Any], alg: str = "HS256", key: str = SECRET) -> str:
    return jwt.encode(claims, key, algorithm=alg)


def _tokens() -> list[str]:
    now = int(time.time())
    rights = {"subscribe": ["private-*"], "publish": ["*"]}
    return [
        TOKEN,
        jwt_token({"ssedge": rights, "exp": now + 3600}),
        jwt_token({"ssedge": {"subscribe": ["other"]}, "exp": now + 3600}),
        jwt_token({"ssedge": rights, "exp": now - 10}),
        jwt_token({"ssedge": rights, "exp": now + 3600}, key="k" * 40),
        jwt_token({"ssedge": "not an object", "exp": now + 3600}),
        jwt_token({"ssedge": rights}),
        "eyJhbGciOiJub25lIn0.eyJzc2VkZ2UiOnsic3Vic2NyaWJlIjpbIioiXX19.",  # alg none
    ]


# -- strategies ------------------------------------------------------------------------------

header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                    exclude_characters="\x7f"), max_size=60).map(str.strip)
header_name = st.text("abcdefghijklmnopqrstuvwxyz-ABCXYZ0123456789!#$%&'*+.^_`|~", min_size=1,
                      max_size=20)
any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
event_id = st.one_of(
    st.builds(lambda ms, seq: f"{ms}-{seq}", st.integers(0, 2**70), st.integers(0, 2**70)),
    st.sampled_from(["0-0", "", "0", "-1-0", "1-", "-", "1e3-0", "99999999999999999999-0",
                     " 1-0", "1-0 ", "\uff11-0", "0x1-0"]),
    header_text,
)
# mostly topics that exist and pass, so that the requests reach deep into the handlers
good_topic = st.sampled_from(["public", "private-1", "private-x", "fuzz-public"])
topic = st.one_of(
    good_topic, good_topic, good_topic,
    st.sampled_from(["private-", "private", "a" * 128, "a" * 129, "", ".", "..", "a/b",
                     "a%2Fb", "x:y", "ünï", "%00", "%ff"]),
    st.text("abc.:_-*", min_size=1, max_size=10),
    any_text.map(lambda t: quote(t, safe="")),
)
endpoint = st.one_of(
    st.builds("/v1/streams/{}/events".format, topic),
    st.builds("/v1/streams/{}".format, topic),
    st.builds("/v1/replay/{}".format, topic),
)
path = st.one_of(
    endpoint, endpoint, endpoint,
    st.sampled_from(["/v1/handshake", "/healthz", "/readyz", "/metrics", "/", "//", "/v1",
                     "/v1/streams", "/v1/streams/", "/v1/streams/t/events/x", "/v2/x",
                     "/v1/streams/t//events", "/%2e%2e/metrics", "/v1/streams/%2F"]),
    any_text.map(lambda t: "/" + quote(t, safe="/")),
)
query_value = st.one_of(event_id, st.sampled_from(["now", "earliest", "0", "1", "-1", "1001",
                                                    "1000000000000", "", "NaN"]),
                        any_text, st.sampled_from(_tokens()))
query = st.dictionaries(
    st.sampled_from(["last_event_id", "since", "backfill", "after", "until", "limit",
                     "access_token", "x", "access_token "]),
    query_value, max_size=4,
).map(lambda q: "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in q.items()))
authorization = st.one_of(
    st.sampled_from(_tokens()).map("Bearer {}".format),
    st.builds("{} {}".format, st.sampled_from(["Bearer", "bearer", "Basic", "", "Token"]),
              header_text),
)
headers = st.fixed_dictionaries({}, optional={
    "Last-Event-ID": event_id,
    "Authorization": authorization,
    "Origin": st.one_of(st.sampled_from(["https://app.example", "https://evil.example",
                                         "null", ""]), header_text),
    "Cookie": st.one_of(st.sampled_from(_tokens()).map("ssedge_auth={}".format), header_text),
    "If-None-Match": header_text,
    "Content-Type": st.sampled_from(["application/json", "text/plain", ""]),
    "Access-Control-Request-Method": st.sampled_from(["GET", "POST", "DELETE"]),
    "X-Fuzz": header_text,
}).flatmap(lambda h: st.dictionaries(header_name, header_text, max_size=3).map(
    lambda extra: {**{k: v for k, v in extra.items()
                      if k.lower() not in ("content-length", "transfer-encoding", "host",
                                           "connection", "expect", "upgrade")}, **h}))
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=6,
)
event_object = st.fixed_dictionaries({}, optional={
    "data": json_value, "event": st.one_of(any_text, json_value), "id": any_text,
})
body = st.one_of(
    st.just(b""),
    st.binary(max_size=200),
    json_value.map(lambda v: json.dumps(v).encode()),
    event_object.map(lambda v: json.dumps(v).encode()),
    st.lists(event_object, max_size=5).map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b'{"data": "\xff"}', b"[" * 10000, b'{"data": ' * 500,
                     b'[' + b'{"data": 1},' * 60 + b'{"data": 1}]', b"x" * 70000]),
)
method = st.one_of(st.sampled_from(["GET", "POST"]), st.sampled_from(["GET", "POST"]),
                   st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS",
                                    "PATCH"]),
                   st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=8))

event_type = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n\x00"),
                     min_size=1, max_size=64)
good_id = st.builds(lambda ms, seq: f"{ms}-{seq}", st.integers(0, 2**64 - 1), st.integers(0, 9))
good_token = st.sampled_from(_tokens()[:3])
publish_body = st.one_of(
    event_object.map(lambda v: json.dumps(v).encode()),
    st.lists(st.fixed_dictionaries({"data": json_value}, optional={"event": event_type}),
             min_size=1, max_size=8).map(lambda v: json.dumps(v).encode()),
    st.lists(st.fixed_dictionaries({"data": json_value}, optional={"event": any_text}),
             min_size=0, max_size=60).map(lambda v: json.dumps(v).encode()),
    body,
)
Request = tuple[str, str, dict[str, str], bytes]


@st.composite
def plausible(draw: st.DrawFn) -> Request:
    """A request an honest client might send, with one or two things wrong at most: these
    reach deep into the handlers (publish, streams, replay pages) rather than the router."""
    kind = draw(st.sampled_from(["stream", "metadata", "publish", "replay", "preflight"]))
    name = draw(good_topic)
    hdrs: dict[str, str] = {}
    if draw(st.booleans()):
        hdrs["Authorization"] = "Bearer " + draw(good_token)
    if draw(st.booleans()):
        hdrs["Origin"] = draw(st.sampled_from(["https://app.example", "https://evil.example"]))
    params: dict[str, str] = {}
    if kind == "stream":
        for key in draw(st.sets(st.sampled_from(["last_event_id", "since", "backfill",
                                                  "access_token"]))):
            params[key] = draw({"last_event_id": st.one_of(good_id, event_id),
                                "since": st.sampled_from(["now", "earliest", "later"]),
                                "backfill": st.sampled_from(["0", "5", "10000", "10001", "x"]),
                                "access_token": good_token}[key])
        if draw(st.booleans()):
            hdrs["Last-Event-ID"] = draw(st.one_of(good_id, event_id))
        method, path, data = "GET", f"/v1/streams/{name}/events", b""
    elif kind == "metadata":
        method, path, data = draw(st.sampled_from(["GET", "HEAD"])), f"/v1/streams/{name}", b""
        if draw(st.booleans()):
            hdrs["If-None-Match"] = draw(header_text)
    elif kind == "publish":
        hdrs["Authorization"] = "Bearer " + draw(st.one_of(st.just(TOKEN), good_token))
        hdrs["Content-Type"] = "application/json"
        method, path, data = "POST", f"/v1/streams/{name}/events", draw(publish_body)
    elif kind == "replay":
        for key in draw(st.sets(st.sampled_from(["after", "until", "limit", "access_token"]))):
            params[key] = draw({"after": st.one_of(good_id, event_id),
                                "until": st.one_of(good_id, event_id),
                                "limit": st.sampled_from(["1", "10", "10000", "10001", "0"]),
                                "access_token": good_token}[key])
        method, path, data = "GET", f"/v1/replay/{name}", b""
    else:
        hdrs["Access-Control-Request-Method"] = "GET"
        method, path, data = "OPTIONS", draw(st.sampled_from(["/v1/streams/t/events",
                                                             "/v1/handshake"])), b""
    query_string = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    return method, path + (f"?{query_string}" if query_string else ""), hdrs, data


@st.composite
def wild(draw: st.DrawFn) -> Request:
    """Anything at all, well formed as HTTP."""
    q = draw(query)
    return (draw(method), draw(path) + (f"?{q}" if q else ""), draw(headers), draw(body))


requests = st.one_of(plausible(), plausible(), wild())


# -- one exchange over a raw socket ----------------------------------------------------------


def exchange(port: int, raw: bytes, *, half_close: bool = False,
             timeout: float = 5.0) -> tuple[int | None, dict[str, str], bytes]:
    """Send ``raw``; read the answer's head and (unless it is a stream) its body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(raw)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer and close before reading everything: still judged
        data = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in data:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                chunk = b""
            if not chunk:
                return (None, {}, data) if not data else _parse(data)
            data += chunk
            assert time.monotonic() < deadline, f"no answer head in {timeout} s"
        status, head, rest = _parse(data)
        if head.get("content-type") == "text/event-stream" or status in (204, 304):
            return status, head, rest
        length = int(head.get("content-length", "0")) if raw.split(b" ", 1)[0] != b"HEAD" else 0
        while len(rest) < length:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            rest += chunk
        return status, head, rest


def _parse(data: bytes) -> tuple[int | None, dict[str, str], bytes]:
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    assert parts[0].startswith("HTTP/1."), f"not an HTTP answer: {lines[0]!r}"
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(parts[1]), fields, rest


def request_bytes(method: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    # non-ASCII goes as UTF-8: obs-text in a header value, raw bytes in a path
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def judge_app_answer(method: str, answer: tuple[int | None, dict[str, str], bytes]) -> None:
    status, head, rest = answer
    assert status is not None, "no answer to a well-formed request"
    assert status < 500, (status, rest[:300])
    if status >= 400 and method != "HEAD":
        assert head.get("content-type") == "application/json", (status, head)
        error = json.loads(rest)
        assert set(error) == {"error", "message"} and isinstance(error["message"], str)
        assert head.get("cache-control") == "no-store"
    if status == 401:
        assert head["www-authenticate"].startswith('Bearer realm="ssedge"')


@pytest.fixture
def servers(start_relay: Callable[..., Relay],
            start_replay: Callable[..., Relay]) -> Iterator[tuple[Relay, Relay]]:
    relay = start_relay(**SETTINGS)
    replay = start_replay(**SETTINGS)
    yield relay, replay
    for server in (relay, replay):
        assert server.process.poll() is None, f"{server.log.name} died"
        health = asyncio.run(client.request("GET", server.url + "/healthz"))
        assert health.status == 200
        answered = asyncio.run(metrics(server.url))
        log = Path(server.log).read_text()
        assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
        assert answered.get("ssedge_responses_total", 0) > 0


def status_counts(url: str) -> dict[int, int]:
    body = asyncio.run(client.request("GET", url + "/metrics")).body.decode()
    out: dict[int, int] = {}
    for line in body.splitlines():
        if line.startswith("ssedge_responses_total{"):
            status = int(line.split('status="', 1)[1].split('"', 1)[0])
            out[status] = out.get(status, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


# -- the tests -------------------------------------------------------------------------------


def test_every_endpoint_refuses_bad_input_without_a_5xx(servers: tuple[Relay, Relay]) -> None:
    relay, replay = servers

    @settings(max_examples=2000)
    @given(request=requests, misroute=st.integers(0, 9))
    def fuzz(request: Request, misroute: int) -> None:
        method, target, headers, body = request
        # replay paths to the replay service, the rest to the relay; one in ten the other way
        to_replay = target.startswith("/v1/replay/") != (misroute == 0)
        port = replay.port if to_replay else relay.port
        judge_app_answer(method, exchange(port, request_bytes(method, target, headers, body)))

    fuzz()
    for server in servers:
        counts = status_counts(server.url)
        assert not [s for s in counts if s >= 500], counts
        print(f"{server.log.name}: answers by status {dict(sorted(counts.items()))}")


def test_malformed_http_never_gets_a_5xx(servers: tuple[Relay, Relay]) -> None:
    relay, replay = servers

    @settings(max_examples=300)
    @given(raw=st.one_of(
        st.binary(max_size=300),
        st.builds(lambda m, t, rest: m + b" " + t + b" HTTP/1.1\r\n" + rest,
                  st.sampled_from([b"GET", b"POST", b"G\x00T", b""]),
                  st.binary(max_size=40), st.binary(max_size=200)),
        st.sampled_from([
            b"GET /v1/handshake HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"POST /v1/streams/t/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\nzz\r\n",
            b"GET /v1/handshake HTTP/1.1\r\nHost: x\r\n" + b"X-A: " + b"a" * 70000 + b"\r\n\r\n",
            b"GET /v1/streams/" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /v1/handshake HTTP/1.1\r\n" + b"X: y\r\n" * 500 + b"\r\n",
            b"GET /v1/handshake HTTP/9.9\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET http://evil.example/v1/handshake HTTP/1.1\r\nHost: x\r\n\r\n",
        ]),
    ), to_replay=st.booleans())
    def fuzz(raw: bytes, to_replay: bool) -> None:
        status, _, rest = exchange(replay.port if to_replay else relay.port, raw,
                                   half_close=True)
        assert status is None or status < 500, (status, rest[:300])

    fuzz()


def test_arbitrary_events_are_read_back_exactly_as_published(
    servers: tuple[Relay, Relay],
) -> None:
    relay, _ = servers
    reader = jwt_token({"ssedge": {"subscribe": ["private-*"]}, "exp": int(time.time()) + 600})
    loop = asyncio.new_event_loop()
    read_back: list[int] = []
    try:
        streams = [loop.run_until_complete(subscribe(f"{relay.url}/v1/streams/{name}/events",
                                                     headers={"Authorization": f"Bearer {reader}"}))
                   for name in ("fuzz-public", "private-fuzz")]

        @settings(max_examples=200)
        @given(batch=st.lists(st.tuples(json_value, st.none() | event_type), min_size=1,
                              max_size=8),
               private=st.booleans(), ascii_only=st.booleans())
        def round_trip(batch: list[tuple[Any, str | None]], private: bool,
                       ascii_only: bool) -> None:
            events = [{"data": d, **({"event": e} if e is not None else {})} for d, e in batch]
            body = json.dumps(events, ensure_ascii=ascii_only).encode()
            name = "private-fuzz" if private else "fuzz-public"
            answer = loop.run_until_complete(client.request(
                "POST", f"{relay.url}/v1/streams/{name}/events", body=body,
                headers={"Authorization": f"Bearer {TOKEN}"}))
            assert answer.status == 201, answer.body
            es = streams[private]
            read_back.append(len(batch))
            got = loop.run_until_complete(collect(es, len(batch), timeout=10))
            es.early = []  # type: ignore[attr-defined]
            assert [e.id for e in got] == answer.json()["ids"]
            for (data, event), received in zip(batch, got, strict=True):
                assert received.event == (event if event is not None else "message")
                if isinstance(data, str):
                    # the one documented change: line breaks arrive as LF
                    assert received.data == data.replace("\r\n", "\n").replace("\r", "\n")
                else:
                    assert json.loads(received.data) == data
                    assert received.data == json.dumps(data, ensure_ascii=ascii_only)

        round_trip()
        for es in streams:
            es.close()
        print(f"{len(read_back)} batches, {sum(read_back)} events read back as published")
        assert len(read_back) >= 100
    finally:
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
