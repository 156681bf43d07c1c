"""``/v1/auth/cookie`` (relay/web/cookie.py) through the relay app, with fake ASGI closures."""

from __future__ import annotations

import time

import jwt
import pytest

from relay.node.app import App
from relay.settings import load
from relay.web import cookie
from tests.node.test_app import call

SECRET = "s" * 40
URL = "/v1/auth/cookie"


def token(subscribe: list[str], ttl: float = 600) -> str:
    return jwt.encode({"ssedge": {"subscribe": subscribe}, "exp": int(time.time() + ttl)},
                      SECRET, algorithm="HS256")


@pytest.fixture
def app() -> App:
    return App(load({}, jwt_secret=SECRET, private_topics="private-*",
                    redis_url="redis://127.0.0.1:1/0", cors_origin="https://app.example"))


def test_post_sets_the_cookie_for_the_token_s_life(app: App) -> None:
    fresh = token(["private-*"], ttl=600)
    status, headers, body = call(app, "POST", URL, {"Authorization": f"Bearer {fresh}",
                                                    "Origin": "https://app.example"})
    assert status == 204 and body == b""
    value = headers["set-cookie"]
    assert value.startswith(f"ssedge_auth={fresh}; ")
    attrs = value.split("; ")[1:]
    assert "Path=/v1/" in attrs and "HttpOnly" in attrs and "SameSite=Lax" in attrs
    max_age = int(next(a for a in attrs if a.startswith("Max-Age="))[8:])
    assert 595 <= max_age <= 600
    assert "Secure" in attrs  # by default: a token is a credential (the local stack unsets it)
    assert headers["cache-control"] == "no-store"
    # a listed origin may call it with credentials
    assert headers["access-control-allow-credentials"] == "true"


@pytest.mark.parametrize(("auth", "status"), [
    (None, 401),
    ("Bearer garbage", 401),
    ("Basic eDp5", 401),
    (f"Bearer {token(['private-*'], ttl=-60)}", 401),
    (f"Bearer {jwt.encode({'ssedge': {'publish': ['*']}, 'exp': 2**40}, SECRET)}", 403),
])
def test_post_refuses_what_cannot_read(app: App, auth: str | None, status: int) -> None:
    got, headers, _ = call(app, "POST", URL, {"Authorization": auth} if auth else {})
    assert got == status and "set-cookie" not in headers


def test_delete_clears_and_other_methods_are_405(app: App) -> None:
    status, headers, _ = call(app, "DELETE", URL)
    assert status == 204 and headers["set-cookie"] == \
        "ssedge_auth=; Path=/v1/; Max-Age=0; HttpOnly; SameSite=Lax; Secure"
    status, headers, _ = call(app, "GET", URL)
    assert status == 405 and headers["allow"] == "POST, DELETE"


def test_cross_site_attributes() -> None:
    none = load({}, auth_cookie_samesite="None")
    assert cookie.attributes(none, 10) == \
        "Path=/v1/; Max-Age=10; HttpOnly; SameSite=None; Secure"
    assert cookie.attributes(load({}), None) == "Path=/v1/; HttpOnly; SameSite=Lax; Secure"
    # plain http off localhost (the local stack sets it: relay/devstack/single.py)
    assert cookie.attributes(load({}, auth_cookie_secure=False), None) == \
        "Path=/v1/; HttpOnly; SameSite=Lax"
