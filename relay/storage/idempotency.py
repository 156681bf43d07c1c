"""Publishing exactly once: a publish's ``Idempotency-Key``, and the one script that checks
the key and writes the events.

A publisher that retries (a timeout, a 503, a relay that died before answering) sends the
same key; the first request's answer is kept under it for ``SSEDGE_IDEMPOTENCY_TTL_S`` and
every retry gets that answer back, with nothing written again.

Key: ``ssedge:{T}:idem:<128 bits of the key's SHA-256, hex>``, in the topic's Cluster slot
(the hash tag), so checking the key and XADDing the events is one script on one node: atomic,
however many relays race with the same key. Hashing the key bounds its length in Redis
whatever the client sent. Value: ``<digest> <id> <id> ...``, the digest being 128 bits of a
SHA-256 over the normalized request (topic, one event or an array, each event's data as it
goes on the wire and its type): the same events sent with other JSON spacing are the same
request; other events under a used key are refused (``KeyReused``, a 422).

Without a key a publish takes ``store.publish`` (MULTI/EXEC) as before: nothing here is on
that path.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError

from relay.storage import clients
from relay.storage import streams as store

HEADER = b"idempotency-key"
MAX_KEY = 255

# KEYS: stream, idempotency key. ARGV: digest, ttl s, maxlen ('0': none), minid ('': none),
# touch ('1': rewrite the key on a replay), then (type or '', data) per event.
# A replay that is followed by WAIT must write: WAIT counts the replication offset of its own
# connection's last write, and a retry's connection may have written nothing (or long ago),
# so a bare GET then WAIT would confirm nothing about the first request's events. Rewriting
# the key (same value, same expiry) moves the offset to now, which is after those events.
_SCRIPT = """
local seen = redis.call('GET', KEYS[2])
if seen then
  if string.sub(seen, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then return {-1} end
  if ARGV[5] == '1' then redis.call('SET', KEYS[2], seen, 'KEEPTTL') end
  return {0, seen}
end
local out = {1}
for i = 6, #ARGV, 2 do
  local cmd = {'XADD', KEYS[1]}
  if ARGV[3] ~= '0' then
    cmd[#cmd + 1] = 'MAXLEN'; cmd[#cmd + 1] = '~'; cmd[#cmd + 1] = ARGV[3]
  end
  cmd[#cmd + 1] = '*'; cmd[#cmd + 1] = 'd'; cmd[#cmd + 1] = ARGV[i + 1]
  if ARGV[i] ~= '' then cmd[#cmd + 1] = 'e'; cmd[#cmd + 1] = ARGV[i] end
  out[#out + 1] = redis.call(unpack(cmd))
end
if ARGV[4] ~= '' then redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[4]) end
redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. table.concat(out, ' ', 2), 'EX', ARGV[2])
return out
"""
_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()


class BadKey(ValueError):
    """What was sent as an Idempotency-Key is not one (the web layer answers 400)."""


class KeyConflict(Exception):
    """The key was first used with another request (other topic, events or shape): nothing
    was written (the web layer answers 422)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    ids: list[str]
    replayed: bool  # the first request's answer; nothing was written now


def parse_key(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The request's ``Idempotency-Key``, None without one; ``BadKey`` for an empty one, one
    over 255 characters, one that is not printable ASCII, or two of them."""
    values = [v for k, v in headers if k.lower() == HEADER]
    if not values:
        return None
    if len(values) > 1:
        raise BadKey("send one Idempotency-Key")
    raw = values[0].strip(b" \t")
    if not 1 <= len(raw) <= MAX_KEY or not all(0x20 <= c <= 0x7E for c in raw):
        raise BadKey(f"an Idempotency-Key is 1 to {MAX_KEY} printable ASCII characters")
    return raw.decode("ascii")


def redis_key(topic: str, key: str) -> str:
    # 128 bits of the hash: no two keys of a topic meet by chance, and 32 bytes less per key
    return store.stream_key(topic) + ":idem:" + hashlib.sha256(key.encode()).hexdigest()[:32]


def digest(topic: str, events: Sequence[tuple[bytes, str | None]], many: bool) -> str:
    """What makes two requests the same: topic, array or not, and each event as it is
    stored. Length-prefixed, so no two different requests serialize alike."""
    h = hashlib.sha256()
    h.update(b"%d:%s|%d|%d|" % (len(topic), topic.encode(), many, len(events)))
    for data, event in events:
        kind = b"-" if event is None else b"%d:%s" % (len(event.encode()), event.encode())
        h.update(b"%d:%s|%s|" % (len(data), data, kind))
    return h.hexdigest()[:32]


async def publish(r: clients.Client, topic: str, events: Sequence[tuple[bytes, str | None]],
                  many: bool, key: str, *, ttl_s: int, maxlen: int, max_age_s: int,
                  replicas: int = 0, replica_timeout_ms: int = 1000) -> Outcome:
    """The events written under ``key`` once: the ids, new or the first request's.

    With ``replicas``, the same connection then sends ``WAIT``, for a replay too: an answer
    (first or repeated) is 201 only once that many replicas hold the events, else
    ``store.NotReplicated`` (and the publisher's retry with the key finds them)."""
    own = digest(topic, events, many)
    min_id = ""
    if max_age_s:
        min_id = f"{int(time.time() * 1000) - max_age_s * 1000}-0"
    args: list[Any] = [own, ttl_s, maxlen, min_id, int(bool(replicas))]
    for data, event in events:
        args += (event or "", data)
    keys = (store.stream_key(topic), redis_key(topic, key))

    async def run(conn: Any) -> Any:
        return await _eval(conn, keys, args, replicas, replica_timeout_ms)

    reply = await store.on_primary(r, keys[0], run)
    if reply[0] == -1:
        raise KeyConflict(key)
    if reply[0] == 0:
        return Outcome(_text(reply[1]).split(" ")[1:], replayed=True)
    return Outcome([_text(i) for i in reply[1:]], replayed=False)


async def _eval(conn: Any, keys: tuple[str, str], args: list[Any], replicas: int,
                replica_timeout_ms: int) -> Any:
    """EVALSHA (EVAL when Redis does not have the script yet) and WAIT in one write."""
    for command in ("EVALSHA", "EVAL"):
        wire: list[tuple[Any, ...]] = [
            (command, _SHA if command == "EVALSHA" else _SCRIPT, 2, *keys, *args)]
        if replicas:
            wire.append(("WAIT", replicas, replica_timeout_ms))
        await conn.send_packed_command(conn.pack_commands(wire))
        try:
            try:
                reply = await conn.read_response()
            except NoScriptError:
                # a new or restarted Redis: nothing ran. The WAIT sent behind it would wait
                # for nothing (up to its timeout, with no replica in sync): the connection
                # is dropped unread instead, and the script sent whole on a new one.
                if replicas:
                    await conn.disconnect()
                    await conn.connect()
                continue
            acked = int(await store.read_wait(conn, replica_timeout_ms)) if replicas else 0
        except BaseException:
            await conn.disconnect()  # not read to the end
            raise
        if replicas and acked < replicas and reply[0] != -1:
            raise store.NotReplicated(f"written, but {acked} of {replicas} replicas confirmed "
                                      f"it within {replica_timeout_ms} ms")
        return reply
    raise AssertionError("EVAL cannot answer NOSCRIPT")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
