"""Operators' orders to every relay: revocations kept in Redis, and one Pub/Sub channel that
carries revocations and disconnects to every relay process at once.

Layout (one Cluster slot: the hash tag ``{#control}``; ``#`` is not a topic character, so no
topic's keys share it):

- ``ssedge:{#control}:revoked``: a sorted set, member ``jti:<id>`` or ``sub:<subject>``, score
  the time (epoch s) the revocation ends; members past it are ignored and removed on write;
- ``ssedge:{#control}:reasons``: the operator's reason of each member (removed with it);
- ``ssedge:{#control}:orders``: the channel. Its messages are JSON ``Order``s. A relay that
  missed one (reconnecting to Redis) has the revocations on its next reload; a missed
  disconnect is gone with the moment it was for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from redis.asyncio.cluster import RedisCluster

from relay.storage.clients import Client

TAG = "{#control}"
REVOKED = "ssedge:" + TAG + ":revoked"
REASONS = "ssedge:" + TAG + ":reasons"
CHANNEL = "ssedge:" + TAG + ":orders"

Kind = Literal["jti", "sub"]


class Order(msgspec.Struct, frozen=True, omit_defaults=True):
    """``revoke``: tokens of ``kind`` ``value`` are refused until ``until``; ``disconnect``:
    streams of the topic (``kind`` "topic") or subject (``kind`` "sub") are ended now."""

    op: Literal["revoke", "disconnect"]
    kind: Literal["jti", "sub", "topic"]
    value: str
    until: float = 0.0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Revocation:
    kind: Kind
    value: str
    until: float
    reason: str = ""

    @property
    def member(self) -> str:
        return f"{self.kind}:{self.value}"

    def describe(self) -> dict[str, object]:
        return {self.kind: self.value, "until": self.until, "reason": self.reason}


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Order).decode


def encode(order: Order) -> bytes:
    return _encode(order)


def decode(raw: bytes) -> Order | None:
    try:
        return _decode(raw)
    except msgspec.DecodeError:
        return None


async def revoke(r: Client, revocation: Revocation) -> None:
    """Keep ``revocation`` until its end and tell every relay (one transaction, one publish)."""
    now = time.time()
    pipe = r.pipeline(transaction=True)
    pipe.zremrangebyscore(REVOKED, "-inf", now)
    pipe.zadd(REVOKED, {revocation.member: revocation.until})
    pipe.hset(REASONS, revocation.member, revocation.reason)
    await pipe.execute()
    await r.publish(CHANNEL, encode(Order("revoke", revocation.kind, revocation.value,
                                          revocation.until, revocation.reason)))


async def lift(r: Client, kind: Kind, value: str) -> bool:
    """End a revocation before its time; whether there was one. Relays forget it at their
    next reload."""
    member = f"{kind}:{value}"
    pipe = r.pipeline(transaction=True)
    pipe.zrem(REVOKED, member)
    pipe.hdel(REASONS, member)
    removed, _ = await pipe.execute()
    return bool(removed)


async def revocations(r: Client) -> list[Revocation]:
    """Every revocation in force now (those past their end are removed here too)."""
    now = time.time()
    pipe = r.pipeline(transaction=True)
    pipe.zrangebyscore(REVOKED, now, "+inf", withscores=True)
    pipe.hgetall(REASONS)
    live, reasons = await pipe.execute()
    out = []
    keep: set[bytes] = set()
    for member, until in live:
        raw = member if isinstance(member, bytes) else str(member).encode()
        keep.add(raw)
        kind, _, value = raw.decode().partition(":")
        if kind in ("jti", "sub"):
            why = reasons.get(raw, b"") if reasons else b""
            out.append(Revocation(kind, value, float(until),  # type: ignore[arg-type]
                                  why.decode() if isinstance(why, bytes) else str(why)))
    stale = [m for m in (reasons or {}) if m not in keep]
    if stale:
        await r.hdel(REASONS, *stale)
    return out


async def listen(r: Client) -> Any:
    """A Pub/Sub connection subscribed to the channel. On a cluster, classic Pub/Sub reaches
    every node: the one the channel's slot names is as good as any."""
    if isinstance(r, RedisCluster):
        await r.initialize()  # its slots, which the subscription is routed by
    pubsub = r.pubsub()
    try:
        await pubsub.subscribe(CHANNEL)
    except BaseException:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        raise
    return pubsub


async def disconnect(r: Client, kind: Literal["topic", "sub"], value: str) -> None:
    await r.publish(CHANNEL, encode(Order("disconnect", kind, value)))
