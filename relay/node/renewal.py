"""Tokens that rotate without a gap: a stream read with a token tells its page ahead of expiry.

A stream read with a token ends when the token expires (plus the leeway), and the browser's
EventSource reconnects with its Last-Event-ID: that reconnect must carry a fresh token. So,
``SSEDGE_TOKEN_REFRESH_S`` before the token's ``exp`` (or half the life it had left when the
stream opened, when that is shorter, so a short token is not told at once), the stream sends::

    event: ssedge.token-expiring
    data: {"expires_at": 1767225600, "in_s": 60}

The page then renews its ``ssedge_auth`` cookie (``POST /v1/auth/cookie``, ``relay.cookie``)
or, with a query-string token, opens a new EventSource (README, "Browser").

The event has no ``id:``. EventSource keeps its last event id across an event without one
(WHATWG: only an ``id`` field sets the buffer), and the frame is written on this connection
only, never into the ring: ring frames and history pages all carry ids, which the resume rules
(``relay.protocol.resume``) compare. One timer per stream, nothing per event.
"""

from __future__ import annotations

import asyncio
import time

import msgspec

from relay.node.topics import Subscription
from relay.protocol.wire import encode_event

EXPIRING = "ssedge.token-expiring"
_json = msgspec.json.Encoder()


def notice_at(exp: float, now: float, lead_s: float) -> float:
    """When (epoch s) a stream opened at ``now`` is told that its token ends at ``exp``."""
    lead = min(lead_s, max(0.0, exp - now) / 2)
    return exp - lead


def frame(exp: float, now: float) -> bytes:
    data = _json.encode({"expires_at": int(exp), "in_s": max(0, round(exp - now))})
    return encode_event(data, event=EXPIRING)


def schedule(sub: Subscription, exp: float | None,
             lead_s: float) -> asyncio.TimerHandle | None:
    """Tell ``sub``'s client ahead of ``exp`` (the token's claim; None: never expires)."""
    if exp is None:
        return None
    now = time.time()
    return asyncio.get_running_loop().call_later(
        max(0.0, notice_at(exp, now, lead_s) - now), _tell, sub, exp)


def _tell(sub: Subscription, exp: float) -> None:
    if sub.closed_because is None:
        # the connection's task writes it between two of its sends (stream._follow)
        sub.notice = frame(exp, time.time())
        sub.resume()
