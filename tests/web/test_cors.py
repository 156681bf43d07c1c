"""Cross-origin rules (relay/web/cors.py), alone and on the app's answers."""

from __future__ import annotations

import json
import time

import jwt
import pytest

from relay.node.app import App
from relay.settings import load
from relay.web.cors import Cors, normalise
from tests.node.test_app import call

SECRET = "s" * 40


def as_dict(headers: tuple[tuple[bytes, bytes], ...]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in headers}


def test_any_origin_without_credentials() -> None:
    cors = Cors("*")
    for origin in (None, "https://a.example"):
        headers = as_dict(cors.headers(origin))
        assert headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in headers and "vary" not in headers


def test_listed_origins_are_echoed_with_credentials_and_vary() -> None:
    cors = Cors("https://app.example, http://localhost:3000")
    headers = as_dict(cors.headers("https://app.example"))
    assert headers["access-control-allow-origin"] == "https://app.example"
    assert headers["access-control-allow-credentials"] == "true"
    assert headers["vary"] == "origin"
    assert "www-authenticate" in headers["access-control-expose-headers"]
    for other in (None, "https://evil.example", "https://app.example.evil.example", "null"):
        assert as_dict(cors.headers(other)) == {"vary": "origin"}
    assert cors.allows("http://localhost:3000") and not cors.allows("http://localhost:3001")


def test_no_cors_at_all() -> None:
    cors = Cors("")
    assert cors.headers("https://a.example") == () and not cors.enabled
    assert cors.preflight("https://a.example") == {}


@pytest.mark.parametrize(("given", "expected"), [
    ("https://App.Example/", "https://app.example"),
    ("https://a.example:443", "https://a.example"),
    ("http://a.example:80", "http://a.example"),
    ("http://a.example:8080", "http://a.example:8080"),
])
def test_configured_origins_are_normalised(given: str, expected: str) -> None:
    assert normalise(given) == expected


def app(**values: str) -> App:
    return App(load({}, publish_token="secret", redis_url="redis://127.0.0.1:1/0", **values))


def test_preflight_for_a_listed_origin_only() -> None:
    listed = app(cors_origin="https://app.example")
    status, headers, _ = call(listed, "OPTIONS", "/v1/streams/t/events",
                              {"Origin": "https://app.example",
                               "Access-Control-Request-Headers": "authorization"})
    assert status == 204
    assert headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in headers["access-control-allow-headers"]
    assert "last-event-id" in headers["access-control-allow-headers"]
    status, headers, _ = call(listed, "OPTIONS", "/v1/streams/t/events",
                              {"Origin": "https://evil.example"})
    assert status == 204 and "access-control-allow-origin" not in headers
    assert "access-control-allow-headers" not in headers


def test_cors_headers_on_answers_and_errors() -> None:
    listed = app(cors_origin="https://app.example", private_topics="private-*",
                 jwt_secret=SECRET)
    origin = {"Origin": "https://app.example"}
    for method, path, status in (("GET", "/v1/handshake", 200),
                                 ("GET", "/v1/streams/private-1", 401),
                                 ("GET", "/v1/streams/bad topic", 400),
                                 ("PUT", "/v1/handshake", 405)):
        got, headers, _ = call(listed, method, path, origin)
        assert got == status
        assert headers["access-control-allow-origin"] == "https://app.example"
        assert headers["vary"] == "origin"


def test_private_metadata_401_403_before_redis() -> None:
    # Redis is unreachable here: 401 and 403 are decided before anything is read
    private = app(private_topics="private-*", jwt_secret=SECRET)
    status, headers, body = call(private, "GET", "/v1/streams/private-1")
    assert status == 401 and json.loads(body)["error"] == "unauthorized"
    assert headers["www-authenticate"] == 'Bearer realm="ssedge"'
    assert headers["cache-control"] == "no-store"
    other = jwt.encode({"ssedge": {"subscribe": ["private-2"]}, "exp": int(time.time()) + 60},
                       SECRET, algorithm="HS256")
    status, headers, body = call(private, "GET", "/v1/streams/private-1/events",
                                 {"Authorization": f"Bearer {other}"})
    assert status == 403 and json.loads(body)["error"] == "forbidden"
    # the topic's name is checked first, then the token, then the rest of the request
    status, _, _ = call(private, "GET", "/v1/streams/private-1/events",
                        {"Last-Event-ID": "bad"})
    assert status == 401
    status, _, _ = call(private, "GET", "/v1/streams/private-1/events",
                        {"Last-Event-ID": "bad", "Authorization": f"Bearer {other}"})
    assert status == 403
