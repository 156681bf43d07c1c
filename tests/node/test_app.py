"""Request parsing and error answers of the relay app, with fake ASGI receive/send closures
(no Redis is reached on these paths)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.node.app import App, decode_events
from relay.protocol.wire import Comment, Decoder, Event
from relay.settings import load
from relay.storage import streams as store
from relay.web.errors import PayloadTooLarge, Unprocessable


def test_decode_events_string_data_as_is_and_json_as_written() -> None:
    events, many = decode_events(b'[{"data": "a\\nb"}, {"data": {"x": [1, 2]}, "event": "t"}]', 10)
    assert many
    assert events == [(b"a\nb", None), (b'{"x": [1, 2]}', "t")]
    one, many = decode_events(b'{"data": null}', 10)
    assert one == [(b"null", None)] and not many


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'{"data": 1, "extra": 2}', b'"x"',
                                  b'{"data": 1, "event": "a\\u0000b"}',
                                  b'{"data": "\xff"}', b'{"data": "\xed\xa0\x80"}',
                                  b'{"data": ["\xff"]}', b'{"data": 1, "event": "\xff"}'])
def test_decode_events_refuses(body: bytes) -> None:
    with pytest.raises(Unprocessable):
        decode_events(body, 10)


def test_decode_events_batch_limit() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_events(b"[" + b",".join([b'{"data": 1}'] * 3) + b"]", 2)


def call(app: App, method: str, path: str, headers: dict[str, str] | None = None,
         body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": method, "path": path, "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    asyncio.run(app(scope, receive, send))
    start = sent[0]
    return (start["status"], {k.decode(): v.decode() for k, v in start["headers"]},
            b"".join(m.get("body", b"") for m in sent[1:]))


@pytest.fixture
def app() -> App:
    return App(load({}, publish_token="secret", redis_url="redis://127.0.0.1:1/0"))


def test_handshake_etag_and_304(app: App) -> None:
    status, headers, body = call(app, "GET", "/v1/handshake")
    assert status == 200 and json.loads(body)["protocol"] == 1
    assert headers["cache-control"].startswith("public, max-age=")
    status, _, body = call(app, "GET", "/v1/handshake", {"If-None-Match": headers["etag"]})
    assert status == 304 and body == b""


def test_handshake_names_the_stream_on_several_topics(app: App) -> None:
    _, _, body = call(app, "GET", "/v1/handshake")
    handshake = json.loads(body)
    assert handshake["streams_url"] == "/v1/streams/events{?topic*}"  # RFC 6570: ?topic=a&…
    assert handshake["max_stream_topics"] == 16


@pytest.mark.parametrize(("method", "path", "headers", "body", "status"), [
    ("POST", "/v1/streams/t/events", {}, b'{"data": 1}', 401),
    ("POST", "/v1/streams/t/events", {"Authorization": "Bearer secret"}, b"nope", 422),
    # the token first, then the Idempotency-Key (before the body)
    ("POST", "/v1/streams/t/events", {"Idempotency-Key": ""}, b'{"data": 1}', 401),
    ("POST", "/v1/streams/t/events", {"Authorization": "Bearer secret", "Idempotency-Key": ""},
     b"nope", 400),
    ("POST", "/v1/streams/t/events", {"Authorization": "Bearer secret",
                                      "Idempotency-Key": "k" * 256}, b'{"data": 1}', 400),
    ("POST", "/v1/streams/t/events", {"Authorization": "Bearer secret",
                                      "Content-Length": str(2 << 20)}, b"", 413),
    ("GET", "/v1/streams/bad topic/events", {}, b"", 400),
    ("GET", "/v1/streams/t/events", {"Last-Event-ID": "x"}, b"", 400),
    ("PUT", "/v1/handshake", {}, b"", 405),
    ("GET", "/v2/anything", {}, b"", 404),
])
def test_errors_are_json_with_status(app: App, method: str, path: str, headers: dict[str, str],
                                     body: bytes, status: int) -> None:
    got, answer_headers, answer = call(app, method, path, headers, body)
    assert got == status
    assert answer_headers["content-type"] == "application/json"
    assert set(json.loads(answer)) == {"error", "message"}


def test_preflight_allows_last_event_id_and_authorization(app: App) -> None:
    status, headers, _ = call(app, "OPTIONS", "/v1/streams/t/events")
    assert status == 204
    assert "last-event-id" in headers["access-control-allow-headers"]
    assert "authorization" in headers["access-control-allow-headers"]
    assert "idempotency-key" in headers["access-control-allow-headers"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",))),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(st.characters(exclude_categories=("Cs",))), inner, max_size=3),
    max_leaves=8,
)
event_types = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n\x00"),
                      min_size=1, max_size=64)


@settings(max_examples=300)
@given(batch=st.lists(st.tuples(json_values, st.none() | event_types), min_size=1, max_size=6),
       ascii_only=st.booleans(), cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_published_events_decode_exactly_as_published(
    batch: list[tuple[Any, str | None]], ascii_only: bool, cuts: list[int]
) -> None:
    """The whole publish path without servers: JSON body, validation, the frame the feed
    builds from the Redis fields, and a reader's decoder fed in arbitrary chunks."""
    body = json.dumps([{"data": d, **({"event": e} if e is not None else {})}
                       for d, e in batch], ensure_ascii=ascii_only).encode()
    events, _ = decode_events(body, 100)
    raw = b"".join(
        store.frame(f"{n + 1}-0".encode(), [b"d", data, *((b"e", ev.encode()) if ev else ())])[0]
        for n, (data, ev) in enumerate(events))
    decoder = Decoder()
    got: list[Event | Comment] = []
    prev = 0
    for cut in [*sorted(c for c in cuts if c <= len(raw)), len(raw)]:
        got.extend(decoder.feed(raw[prev:cut]))
        prev = cut
    assert [e.id for e in got if isinstance(e, Event)] == [f"{n + 1}-0" for n in range(len(batch))]
    for (data, event), received in zip(batch, got, strict=True):
        assert isinstance(received, Event)
        assert received.event == (event if event is not None else "message")
        if isinstance(data, str):
            # the one documented change: CRLF and CR arrive as LF
            assert received.data == data.replace("\r\n", "\n").replace("\r", "\n")
        else:
            assert received.data == json.dumps(data, ensure_ascii=ascii_only)
            assert json.loads(received.data) == data
