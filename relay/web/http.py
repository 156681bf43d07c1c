"""Small ASGI helpers: the request as ssedge reads it, JSON answers, bounded bodies, errors.

Every error leaves through ``Responder.error`` as ``{"error": code, "message": text}`` with
its status: the one place where the error hierarchy meets HTTP.

Headers that depend on the request rather than on the answer (CORS: ``relay.cors``) are
decided once, when ``answer`` starts a request, and held in a context variable that every
answer of that request reads when it starts: handlers and the stream never pass them along,
and nothing is added per event.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from typing import Any
from urllib.parse import parse_qsl, unquote

import msgspec

from relay import logs
from relay.protocol import names
from relay.web import errors, forwarded
from relay.web.cors import Cors, Headers
from relay.web.errors import BadRequest, HTTPError, PayloadTooLarge, Unprocessable

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_json = msgspec.json.Encoder()
# the CORS headers of the request being answered (set by ``answer``)
_request_headers: ContextVar[Headers] = ContextVar("ssedge_request_headers", default=())
# with the access log on: the status of the answer being written (set by ``Responder.start``)
_status: ContextVar[list[int] | None] = ContextVar("ssedge_status", default=None)


def parse_topic(raw: str) -> str:
    """A topic name from a path, or 400."""
    if not names.is_topic(raw):
        raise BadRequest(names.TOPIC_RULE)
    return raw


class Request:
    __slots__ = ("headers", "method", "parts", "path", "query", "scope", "started")

    def __init__(self, scope: Scope) -> None:
        self.started = time.monotonic()  # for the latency histograms and the access log
        self.scope = scope
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        # split before decoding, so that an encoded "/" stays inside its segment
        raw = scope.get("raw_path") or scope["path"].encode()
        segments = raw.split(b"?")[0].strip(b"/").split(b"/")
        self.parts: list[str] = [unquote(p.decode("latin-1"), errors="replace") for p in segments]
        self.headers: dict[str, str] = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
        }
        self.query: dict[str, str] = dict(
            parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        )


class Responder:
    """Writes whole answers; adds the request's CORS headers to each and counts them."""

    def __init__(self, cors_origin: str, counts: dict[int, int], access_log: bool = False,
                 trusted_proxies: tuple[forwarded.Network, ...] = ()) -> None:
        self.cors = Cors(cors_origin)
        self._counts = counts
        self.access_log = access_log
        # whose X-Forwarded-For names the client in the access log (relay.web.forwarded)
        self.trusted_proxies = trusted_proxies

    def client(self, request: Request) -> str:
        """The client's address: the peer's, or what a trusted proxy says it is."""
        peer = request.scope.get("client") or ("-", 0)
        return forwarded.client_address(str(peer[0]), request.headers.get("x-forwarded-for"),
                                        self.trusted_proxies)

    def headers(self, extra: dict[str, str]) -> list[tuple[bytes, bytes]]:
        return [*_request_headers.get(), *((k.encode(), v.encode()) for k, v in extra.items())]

    async def start(self, send: Send, status: int, headers: dict[str, str]) -> None:
        self._counts[status] = self._counts.get(status, 0) + 1
        noted = _status.get()
        if noted is not None:
            noted[0] = status
        await send({"type": "http.response.start", "status": status,
                    "headers": self.headers(headers)})

    async def body(self, send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
        await self.start(send, status, {**headers, "content-length": str(len(body))})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def json(self, send: Send, status: int, payload: Any,
                   headers: dict[str, str] | None = None) -> None:
        await self.body(send, status, _json.encode(payload),
                        {"content-type": "application/json", **(headers or {})})

    async def cached_json(self, send: Send, request: Request, payload: Any,
                          cache_control: str) -> None:
        await self.cached(send, request, _json.encode(payload), cache_control,
                          {"content-type": "application/json"})

    async def cached(self, send: Send, request: Request, body: bytes, cache_control: str,
                     headers: dict[str, str]) -> None:
        """A cacheable answer with a strong ETag, and 304 when the client has it."""
        etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
        headers = {**headers, "cache-control": cache_control, "etag": etag}
        if etag in _etags(request.headers.get("if-none-match", "")):
            headers.pop("content-type", None)
            await self.start(send, 304, headers)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await self.body(send, 200, body, headers)

    async def preflight(self, send: Send, request: Request) -> None:
        """A CORS preflight: what a listed origin may send (nothing for another origin)."""
        allowed = self.cors.preflight(request.headers.get("origin"))
        await self.body(send, 204, b"", {**allowed, "cache-control": "public, max-age=86400"})

    async def error(self, send: Send, exc: HTTPError) -> None:
        payload: dict[str, Any] = {"error": exc.code, "message": exc.message}
        if isinstance(exc, errors.Revoked):
            payload["revocation"] = exc.revocation
        await self.json(send, exc.status, payload, {"cache-control": "no-store", **exc.headers})


async def answer(responder: Responder, request: Request, send: Send,
                 handle: Awaitable[None]) -> None:
    """Run a handler; every error leaves as its JSON answer, never as a traceback."""
    context = _request_headers.set(responder.cors.headers(request.headers.get("origin")))
    noted = _status.set([0]) if responder.access_log else None
    try:
        await handle
    except HTTPError as exc:
        await responder.error(send, exc)
    except Exception as exc:
        mapped = errors.from_below(exc)
        if mapped is not None:  # a lower layer's words: the one table in errors.py
            await responder.error(send, mapped)
            return
        logging.getLogger("ssedge").exception("unexpected error on %s %s", request.method,
                                              request.path)
        await responder.json(send, 500, {"error": "internal",
                                         "message": "unexpected error; see the server log"})
    finally:
        _request_headers.reset(context)
        if noted is not None:
            status = _status.get() or [0]
            _status.reset(noted)
            # the path only: the query may hold a reader's token (access_token)
            logs.access(request.method, request.path, status[0],
                        time.monotonic() - request.started, responder.client(request))


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


async def read_body(receive: Receive, limit: int, declared: str | None) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes as soon as it is known."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # the body ended early. A client that left hears nothing; one that only closed
            # its sending side (a truncated chunked body, found by fuzzing) gets this 400
            # instead of the server's bare 500 for an app that answered nothing.
            raise BadRequest("the request body ended before it was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def decode_json(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    """A JSON request body decoded (and checked) by ``decoder``; a 422 that says what is
    wrong with it otherwise."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise Unprocessable(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise Unprocessable(f"body is not JSON: {exc}") from None
