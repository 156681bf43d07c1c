"""Operators' orders in one relay process: revoked tokens, and streams ended on demand.

Revocations (by a token's ``jti``, or every token of a ``sub``, until a time) are kept in
Redis (``relay.storage.control``) and broadcast on its channel; each process holds them all
in memory (``Revoked``), applies each broadcast at once, and reads them all again every
``SSEDGE_REVOCATION_RELOAD_S`` (a broadcast missed while Redis was away, a relay started
after it). So a revoked token's streams end on every relay within a moment of the order, and
a new request with it is refused for good (403, ``relay.web.errors.Revoked``): by WHATWG an
EventSource given a 403 closes for good.

A stream read with a token is indexed here by its ``jti`` and its ``sub`` (``Identities``):
finding a token's streams costs nothing per event, one dictionary look-up per order. Before
ending such a stream, its client is told why: an ``ssedge.revoked`` event (no ``id:``, like
``ssedge.token-expiring``), whose data is JSON naming the revocation, then the end of the
stream; its reconnect gets the 403.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec
from redis.exceptions import RedisError

from relay.node.topics import Hub, Subscription
from relay.protocol.wire import encode_event
from relay.storage import clients, control
from relay.storage.clients import Client
from relay.storage.control import Revocation
from relay.web import errors

if TYPE_CHECKING:
    from relay.node.metrics import Metrics

log = logging.getLogger("ssedge.revocation")

REVOKED_EVENT = "ssedge.revoked"
#: why a stream was closed by an operator's order (``stream.end`` ends it with its notice)
CLOSE_REVOKED = "revoked"
CLOSE_ORDERED = "disconnected by an operator"
_json = msgspec.json.Encoder()
_RESUBSCRIBE_S = 1.0


def frame(revocation: Revocation) -> bytes:
    """The ``ssedge.revoked`` event a stream gets before it ends."""
    data = {"reason": revocation.reason or "revoked", **revocation.describe()}
    return encode_event(_json.encode(data), event=REVOKED_EVENT)


class Identities:
    """The streams read with a token, by the token's ``jti`` and ``sub`` (each stream by the
    subscription that stands for it)."""

    def __init__(self) -> None:
        self.by_jti: dict[str, set[Subscription]] = {}
        self.by_sub: dict[str, set[Subscription]] = {}

    def add(self, head: Subscription, jti: str | None, sub: str | None) -> None:
        if jti:
            self.by_jti.setdefault(jti, set()).add(head)
        if sub:
            self.by_sub.setdefault(sub, set()).add(head)

    def remove(self, head: Subscription, jti: str | None, sub: str | None) -> None:
        for index, key in ((self.by_jti, jti), (self.by_sub, sub)):
            if key:
                held = index.get(key)
                if held is not None:
                    held.discard(head)
                    if not held:
                        del index[key]

    def of(self, kind: str, value: str) -> list[Subscription]:
        index = self.by_jti if kind == "jti" else self.by_sub
        return list(index.get(value, ()))


class Held:
    """Every revocation in force, by kind and value."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], Revocation] = {}

    def __len__(self) -> int:
        now = time.time()
        return sum(1 for r in self._held.values() if r.until > now)

    def add(self, revocation: Revocation) -> None:
        self._held[(revocation.kind, revocation.value)] = revocation

    def replace(self, revocations: Iterable[Revocation]) -> None:
        self._held = {(r.kind, r.value): r for r in revocations}

    def find(self, jti: str | None, sub: str | None) -> Revocation | None:
        """The revocation a token with these claims falls under now, if any."""
        now = time.time()
        for key in (("jti", jti), ("sub", sub)):
            if key[1]:
                found = self._held.get(key)  # type: ignore[arg-type]
                if found is not None and found.until > now:
                    return found
        return None


class Orders:
    """What this process does with operators' orders: the revocations it holds, the streams
    it can find by token, and the task that follows the channel and reloads."""

    def __init__(self, hub: Hub, redis: Client, reload_s: float, metrics: Metrics) -> None:
        self.hub = hub
        self.redis = redis
        self.reload_s = reload_s
        self.revoked = Held()
        self.identities = Identities()
        self.ended = 0  # streams ended by a revocation
        self.disconnected = 0  # streams ended by a disconnect order
        self.loaded = False
        metrics.gauge("revocations", "Token revocations in force, as this process holds them.",
                      lambda: len(self.revoked))
        metrics.counter("revoked_streams_total", "Streams ended because their token was "
                        "revoked.", lambda: self.ended)
        metrics.counter("ordered_disconnects_total", "Streams ended by an operator's "
                        "disconnect order.", lambda: self.disconnected)

    # -- applying orders ----------------------------------------------------------------

    def check(self, jti: str | None, sub: str | None) -> None:
        """Refuse for good (403) a token revoked now."""
        found = self.revoked.find(jti, sub)
        if found is not None:
            until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(found.until))
            why = f": {found.reason}" if found.reason else ""
            raise errors.Revoked(f"this token was revoked ({found.kind} {found.value}) until "
                                 f"{until}{why}", found.describe())

    def register(self, head: Subscription, jti: str | None, sub: str | None) -> None:
        """Index a stream read with a token; one revoked since its check ends at once."""
        self.identities.add(head, jti, sub)
        found = self.revoked.find(jti, sub)
        if found is not None:
            self.end_revoked(found)

    def apply(self, order: control.Order) -> int:
        """Carry out one order here; the streams it ended."""
        if order.op == "revoke" and order.kind in ("jti", "sub"):
            revocation = Revocation(order.kind, order.value, order.until, order.reason)
            self.revoked.add(revocation)
            return self.end_revoked(revocation)
        if order.op == "disconnect":
            if order.kind == "topic":
                topic = self.hub.topics.get(order.value)
                heads = list(topic.subscribers) if topic is not None else []
            else:
                heads = self.identities.of("sub", order.value)
            heads = [sub for sub in heads if sub.closed_because is None]
            for sub in heads:
                sub.close(CLOSE_ORDERED)
            self.disconnected += len(heads)
            return len(heads)
        return 0

    def end_revoked(self, revocation: Revocation) -> int:
        if revocation.until <= time.time():
            return 0
        heads = [sub for sub in self.identities.of(revocation.kind, revocation.value)
                 if sub.closed_because is None]
        notice = frame(revocation)
        for sub in heads:
            sub.notice = notice  # the stream's last bytes (``stream.end``)
            sub.close(CLOSE_REVOKED)
        self.ended += len(heads)
        if heads:
            log.info("revoked %s %s: ended %d streams", revocation.kind, revocation.value,
                     len(heads))
        return len(heads)

    # -- following Redis ----------------------------------------------------------------

    async def reload(self) -> None:
        revocations = await control.revocations(self.redis)
        self.revoked.replace(revocations)
        self.loaded = True
        for revocation in revocations:  # streams that opened before a missed broadcast
            self.end_revoked(revocation)

    async def run(self) -> None:
        """Follow the channel (subscribed again after any failure) and reload on schedule."""
        reloading = asyncio.ensure_future(self._reload_loop())
        try:
            while True:
                try:
                    await self._listen()
                except (RedisError, OSError) as exc:
                    log.debug("orders channel lost: %s", exc)
                except Exception:  # a client's own trouble (a cluster's slots): try again
                    log.exception("orders channel failed; subscribing again")
                finally:
                    clients.still_wanted()
                await asyncio.sleep(_RESUBSCRIBE_S)
        finally:
            reloading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reloading

    async def _listen(self) -> None:
        pubsub = await control.listen(self.redis)
        try:
            # what was revoked while this process was not listening
            await self.reload()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                   timeout=1.0)
                if message is None or message.get("type") != "message":
                    continue
                order = control.decode(message["data"])
                if order is not None:
                    self.apply(order)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reload_s)
            try:
                await self.reload()
            except (RedisError, OSError) as exc:
                log.debug("revocations not reloaded: %s", exc)
            finally:
                clients.still_wanted()
