"""The operator API (``/v1/admin/``, on each relay's own port; never through the edge):

- ``GET /v1/admin/audience?limit=N``: the busiest topics of the deployment, streams open on
  each across every relay process (at most ``SSEDGE_AUDIENCE_PERIOD_S`` and a moment old);
- ``GET /v1/admin/revocations``; ``POST`` ``{"jti": …}`` or ``{"sub": …}`` with ``until``
  (epoch s) and an optional ``reason``: the token (or every token of the subject) is refused
  until then, and its streams end on every relay; ``DELETE ?jti=…`` or ``?sub=…`` lifts one
  (relays forget it at their next reload);
- ``POST /v1/admin/disconnect`` ``{"topic": …}`` or ``{"sub": …}``: end those streams on every
  relay now (they reconnect and resume with their Last-Event-ID, as their token allows);
- ``POST /v1/admin/drain``: this relay node drains and stops, as on SIGTERM.

Every request needs ``Authorization: Bearer <SSEDGE_ADMIN_TOKEN>`` (``relay.web.admin``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Annotated

import msgspec
from msgspec import Meta
from redis.exceptions import RedisError

from relay.node.relay import Relay
from relay.protocol import names
from relay.storage import control, presence
from relay.storage.control import Revocation
from relay.web.admin import AdminAuth
from relay.web.errors import BadRequest, MethodNotAllowed, NotFound, Unavailable, Unprocessable
from relay.web.http import Receive, Request, Send, decode_json, read_body

_MAX_BODY = 16 * 1024
_MAX_LIMIT = 1000
_MAX_REVOCATION_S = 366 * 86400  # a token outliving a year of revocation is a setting's job

Value = Annotated[str, Meta(min_length=1, max_length=1024)]


class RevokeBody(msgspec.Struct, forbid_unknown_fields=True):
    until: float
    jti: Value | None = None
    sub: Value | None = None
    reason: Annotated[str, Meta(max_length=512)] = ""


class DisconnectBody(msgspec.Struct, forbid_unknown_fields=True):
    topic: Annotated[str, Meta(pattern=names.TOPIC_PATTERN)] | None = None
    sub: Value | None = None


_revoke_body = msgspec.json.Decoder(RevokeBody)
_disconnect_body = msgspec.json.Decoder(DisconnectBody)


def _one(**given: str | None) -> tuple[str, str]:
    named = [(k, v) for k, v in given.items() if v is not None]
    if len(named) != 1:
        raise Unprocessable(f"give exactly one of {', '.join(given)}")
    return named[0]


class Admin:
    def __init__(self, relay: Relay, auth: AdminAuth, drain: Callable[[], None]) -> None:
        self.relay = relay
        self.auth = auth
        self.drain = drain

    async def route(self, request: Request, receive: Receive, send: Send) -> None:
        self.auth.check(request)
        what = "/".join(request.parts[2:])
        method = request.method
        routes = {
            ("audience", "GET"): self.audience,
            ("revocations", "GET"): self.revocations,
            ("revocations", "POST"): self.revoke,
            ("revocations", "DELETE"): self.lift,
            ("disconnect", "POST"): self.disconnect,
            ("drain", "POST"): self.drain_node,
        }
        handler = routes.get((what, method))
        if handler is None:
            allowed = [m for (w, m) in routes if w == what]
            if allowed:
                raise MethodNotAllowed(", ".join(allowed))
            raise NotFound(f"no such resource: {request.path}")
        try:
            await handler(request, receive, send)
        except (RedisError, OSError):
            raise Unavailable("Redis is not reachable", 1) from None

    async def _json(self, send: Send, status: int, payload: object) -> None:
        await self.relay.responder.json(send, status, payload, {"cache-control": "no-store"})

    async def audience(self, request: Request, receive: Receive, send: Send) -> None:
        raw = request.query.get("limit", "20")
        if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= _MAX_LIMIT:
            raise BadRequest(f"limit is a whole number from 1 to {_MAX_LIMIT}")
        relay = self.relay
        seen = await presence.everything(relay.redis.primary, relay.audience.ttl_ms)
        await self._json(send, 200, {
            "topics": [{"topic": t, "audience": n} for t, n in seen.busiest(int(raw))],
            "topic_count": len(seen.topics),
            "streams": seen.streams,
            "processes": seen.processes,
            "period_s": relay.settings.audience_period_s,
            "at": round(time.time(), 3),
        })

    async def revocations(self, request: Request, receive: Receive, send: Send) -> None:
        held = await control.revocations(self.relay.redis.primary)
        await self._json(send, 200, {"revocations": [r.describe() for r in held]})

    async def revoke(self, request: Request, receive: Receive, send: Send) -> None:
        body: RevokeBody = decode_json(_revoke_body, await read_body(
            receive, _MAX_BODY, request.headers.get("content-length")))
        kind, value = _one(jti=body.jti, sub=body.sub)
        now = time.time()
        if not now < body.until <= now + _MAX_REVOCATION_S:
            raise Unprocessable("until is a time (epoch seconds) in the future, within a year")
        revocation = Revocation(kind, value, body.until, body.reason)  # type: ignore[arg-type]
        await control.revoke(self.relay.redis.primary, revocation)
        # here at once; every relay (this one too) hears it on the channel
        ended = self.relay.orders.apply(control.Order("revoke", revocation.kind, value,
                                                      revocation.until, revocation.reason))
        await self._json(send, 201, {"revocation": revocation.describe(),
                                     "ended_here": ended})

    async def lift(self, request: Request, receive: Receive, send: Send) -> None:
        kind, value = _one(jti=request.query.get("jti"), sub=request.query.get("sub"))
        lifted = await control.lift(self.relay.redis.primary, kind, value)  # type: ignore[arg-type]
        if lifted:
            await self.relay.orders.reload()
        await self._json(send, 200, {"lifted": lifted, kind: value})

    async def disconnect(self, request: Request, receive: Receive, send: Send) -> None:
        body: DisconnectBody = decode_json(_disconnect_body, await read_body(
            receive, _MAX_BODY, request.headers.get("content-length")))
        kind, value = _one(topic=body.topic, sub=body.sub)
        await control.disconnect(self.relay.redis.primary, kind, value)  # type: ignore[arg-type]
        await self._json(send, 202, {"disconnect": {kind: value}})

    async def drain_node(self, request: Request, receive: Receive, send: Send) -> None:
        relay = self.relay
        await self._json(send, 202, {"draining": relay.settings.node,
                                     "drain_s": relay.settings.drain_s})
        self.drain()


def drain_node(relay: Relay, in_server: bool) -> Callable[[], None]:
    """What ``POST /v1/admin/drain`` does: in a server's worker, SIGTERM to the node's main
    process (Granian's), which signals every worker: each drains and the node stops, exactly
    as a SIGTERM from outside; in an app a test holds, this process's relay drains."""
    def drain() -> None:
        if in_server:
            os.kill(os.getppid(), signal.SIGTERM)
        else:
            _draining.add(asyncio.ensure_future(relay.drain()))
    return drain


_draining: set[asyncio.Task[None]] = set()
