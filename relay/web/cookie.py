"""``/v1/auth/cookie``: a page renews the token cookie its EventSources send.

A browser's EventSource cannot set headers; with the cookie way of passing a token, the next
reconnect of every EventSource on the page carries whatever ``ssedge_auth`` cookie the browser
holds then. So a page told that its token is expiring (``relay.node.renewal``) gets a fresh token
from its application and hands it over::

    POST /v1/auth/cookie
    Authorization: Bearer <fresh token>
    -> 204, Set-Cookie: ssedge_auth=<token>; Path=/v1/; Max-Age=<exp - now>; HttpOnly; SameSite=Lax

``DELETE /v1/auth/cookie`` clears it (sign-out). The token is verified first (401 for a bad
one) and must grant some ``subscribe`` right (else 403): the endpoint never turns a publish
token into an ambient credential. HttpOnly: the page's scripts never read it back.

Why a relay endpoint can set it safely: the token travels in the ``Authorization`` header,
which no form can send and which a cross-origin script can only send after a CORS preflight
that the relay grants to listed origins alone (``relay.cors``); the same holds for
``DELETE``. Cookies are scoped to the host that set them, so the page must reach this
endpoint on the same host as its streams (the edge).
"""

from __future__ import annotations

import time

from relay.settings import Settings
from relay.web.auth import TOKEN_COOKIE, Authority, bearer
from relay.web.errors import Forbidden, MethodNotAllowed, Unauthorized
from relay.web.http import Request, Responder, Send

PATH = "/v1/auth/cookie"
_NO_STORE = {"cache-control": "no-store"}


def attributes(settings: Settings, max_age: int | None) -> str:
    """The cookie's attributes: what every stream URL under /v1/ is sent with."""
    parts = ["Path=/v1/", "HttpOnly", f"SameSite={settings.auth_cookie_samesite}"]
    if max_age is not None:
        parts.insert(1, f"Max-Age={max_age}")
    # browsers refuse SameSite=None without Secure
    if settings.auth_cookie_secure or settings.auth_cookie_samesite == "None":
        parts.append("Secure")
    return "; ".join(parts)


async def answer(request: Request, authority: Authority, settings: Settings,
                 responder: Responder, send: Send) -> None:
    if request.method == "DELETE":
        value = f"{TOKEN_COOKIE}=; {attributes(settings, 0)}"
    elif request.method == "POST":
        token = bearer(request)
        if token is None:
            raise Unauthorized("send the token as Authorization: Bearer <token>", missing=True)
        verified = await authority.verifier.verify_async(token)
        if not verified.subscribe:
            raise Forbidden("this token may not read any topic")
        # the cookie lives as long as the token: the browser drops it when it is useless
        max_age = None if verified.exp is None else max(0, int(verified.exp - time.time()))
        value = f"{TOKEN_COOKIE}={token}; {attributes(settings, max_age)}"
    else:
        raise MethodNotAllowed("POST, DELETE")
    await responder.start(send, 204, {**_NO_STORE, "set-cookie": value})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
