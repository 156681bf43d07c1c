"""``ssedge drill``'s clients: readers that behave like a browser's EventSource, publishers that
keep what was acknowledged, and the audit that reads a topic's store from its start.

They judge events with the load tests' bookkeeping (``loadtests.tally``: the payload's
publisher and sequence number, duplicates, order), in asyncio with ssedge's own client and
wire decoder: Locust is never imported here (it would monkey-patch this process with gevent).
Everything they see is put in the drill's timeline (``relay.drill_report``) when it happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from relay.drill.report import Timeline
from relay.protocol import ids, tally
from relay.protocol.wire import Decoder, Event
from relay.web import client

#: what a dropped connection looks like to these clients
NETWORK_ERRORS = (OSError, TimeoutError, asyncio.IncompleteReadError, client.ProtocolError)
#: a publish that takes longer is given up (its events retired: never acknowledged)
PUBLISH_TIMEOUT_S = 5.0
#: most events in one publish request
BATCH_MAX = 100
#: events per replay page an audit asks for
AUDIT_PAGE = 1000


def stream_url(base_url: str, topic: str) -> str:
    return f"{base_url}/v1/streams/{quote(topic, safe='')}/events"


@dataclass(frozen=True, slots=True)
class Ack:
    id: str
    at: float  # drill clock


class Publisher:
    """Publishes ``rate`` events a second to every topic, numbered per topic as the load
    tests' publishers do, and keeps each acknowledged event's id and time: only those count as
    lost when missing. A failed request's events are retired, never resent: later events tell
    readers not to wait for them."""

    def __init__(self, base_url: str, token: str, topics: list[str], rate: float, pad: int,
                 timeline: Timeline, clock: Callable[[], float]) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.topics = topics
        self.rate = rate
        self.pad = pad
        self.timeline = timeline
        self.clock = clock
        self.name = secrets.token_hex(4)
        self.acked: dict[str, dict[int, Ack]] = {t: {} for t in topics}
        self.seq = dict.fromkeys(topics, 0)
        self.retired = dict.fromkeys(topics, 0)
        self.newest = dict.fromkeys(topics, 0)  # the largest acknowledged id, as a key
        self._last_ack: float | None = None

    async def run(self, stop: asyncio.Event) -> None:
        begun, sent = self.clock(), 0
        tick = max(0.05, 1 / self.rate)
        while not stop.is_set():
            due = int((self.clock() - begun) * self.rate) - sent
            if due > 0:
                for topic in self.topics:
                    for start in range(0, due, BATCH_MAX):
                        await self.publish(topic, min(BATCH_MAX, due - start))
                sent += due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick)

    async def publish(self, topic: str, count: int, *, last: bool = False) -> bool:
        first = self.seq[topic] + 1
        self.seq[topic] += count
        body = [{"data": tally.encode(time.time(), self.name, s, self.retired[topic],
                                      last and s == first + count - 1, self.pad)}
                for s in range(first, first + count)]
        answer: list[str] = []
        with contextlib.suppress(*NETWORK_ERRORS, ValueError, KeyError):
            response = await client.request(
                "POST", f"{self.base_url}/v1/streams/{quote(topic, safe='')}/events",
                headers=self.headers, json_body=body, timeout=PUBLISH_TIMEOUT_S)
            if response.status == 201:
                answer = list(response.json()["ids"])
        now = self.clock()
        window = self.timeline.at(now)
        if len(answer) != count:
            self.retired[topic] += count
            window.publish_failed += 1
            return False
        for seq, event_id in zip(range(first, first + count), answer, strict=True):
            self.acked[topic][seq] = Ack(event_id, now)
        self.newest[topic] = max(self.newest[topic], ids.parse(answer[-1]))
        window.acked += count
        if self._last_ack is not None:
            window.publish_stall_s = max(window.publish_stall_s, now - self._last_ack)
        self._last_ack = now
        return True

    async def finish(self, timeout: float) -> bool:
        """Each topic's last event (marked so), tried until acknowledged or ``timeout``."""
        deadline = self.clock() + timeout
        for topic in self.topics:
            while not await self.publish(topic, 1, last=True):
                if self.clock() > deadline:
                    return False
                await asyncio.sleep(0.2)
        return True


class Reader:
    """Follows one topic as a browser's EventSource does: after a dropped stream it waits the
    stream's ``retry`` (or ``retry_ms``) and reconnects with ``Last-Event-ID``. A stream request
    answered other than 200 is counted as refused (a browser would stop for good there); the
    reader tries again, as a reloaded page would, so that loss is still accounted for."""

    def __init__(self, base_url: str, topic: str, timeline: Timeline, clock: Callable[[], float],
                 retry_ms: int | None) -> None:
        self.url = stream_url(base_url, topic)
        self.topic = topic
        self.timeline = timeline
        self.clock = clock
        self.retry_override = retry_ms
        self.tally = tally.Tally()
        #: per publisher, how many times each sequence number arrived (capped at 255)
        self.received: dict[str, bytearray] = {}
        self.subscribed = asyncio.Event()
        #: events received after this moment are not judged for stalls (publishing ended)
        self.publish_end = math.inf
        self._last_event: float | None = None

    async def run(self) -> None:
        last_id, retry_ms = "", 3000
        while True:
            try:
                es = await client.stream(self.url, last_event_id=last_id or None)
            except NETWORK_ERRORS:
                await asyncio.sleep(self._retry(retry_ms) / 1000)
                continue
            if es.response.status != 200:
                self.timeline.at(self.clock()).refused += 1
                es.close()
                await asyncio.sleep(self._retry(retry_ms) / 1000)
                continue
            try:
                while not es.ended:
                    items = await es.read_chunk()
                    if es.decoder.retry is not None:
                        self.subscribed.set()
                    for item in items:
                        if isinstance(item, Event):
                            self._see(item)
            except NETWORK_ERRORS:
                pass
            finally:
                es.close()
            last_id = es.decoder.last_event_id or last_id
            retry_ms = es.decoder.retry if es.decoder.retry is not None else retry_ms
            self.timeline.at(self.clock()).reconnects += 1
            await asyncio.sleep(self._retry(retry_ms) / 1000)

    def _retry(self, stream_ms: int) -> int:
        return self.retry_override if self.retry_override is not None else stream_ms

    def _see(self, event: Event) -> None:
        now = self.clock()
        window = self.timeline.at(now)
        if event.event == "ssedge.reset":
            window.resets += 1
            return
        payload = tally.parse(event.data)
        if payload is None:
            return
        self._gap_until(now)
        self._last_event = now
        regressions = self.tally.id_regressions
        verdict = self.tally.see(self.topic, event.id, payload)
        if verdict.duplicate:
            window.duplicates += 1
        elif verdict.late or self.tally.id_regressions > regressions:
            window.out_of_order += 1
        seen = self.received.setdefault(payload.publisher, bytearray())
        if payload.seq >= len(seen):
            seen.extend(bytes(payload.seq + 1 - len(seen)))
        seen[payload.seq] = min(255, seen[payload.seq] + 1)

    def _gap_until(self, now: float) -> None:
        """The time without events up to ``now`` (or to the end of publishing)."""
        if self._last_event is None or self._last_event >= self.publish_end:
            return
        end = min(now, self.publish_end)
        window = self.timeline.at(end)
        window.stall_s = max(window.stall_s, end - self._last_event)

    def close(self) -> None:
        """The gap still open at the end counts too (a reader stuck until the end)."""
        self._gap_until(self.clock())

    def has(self, publisher: str, seq: int) -> bool:
        seen = self.received.get(publisher)
        return seen is not None and seq < len(seen) and seen[seq] > 0


async def audit(base_url: str, topic: str, target: int,
                timeout: float) -> dict[str, set[int]] | None:
    """Which events of each publisher the topic's stream holds up to the id ``target`` (a key;
    0: nothing to read), read from its start through the replay API at ``base_url``; None when
    that could not be done within ``timeout`` (the audit proves nothing then).

    The replay API reads Redis, the store itself: a relay's stream would serve what its ring
    still holds, which hides a Redis that lost its data. Every page names ``until`` (the
    target), so no page cached for an earlier audit is reused by a later one."""
    seen: dict[str, set[int]] = {}
    if not target:
        return seen
    until = ids.format(target)
    after = "0-0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        url = (f"{base_url}/v1/replay/{quote(topic, safe='')}?after={after}&until={until}"
               f"&limit={AUDIT_PAGE}")
        try:
            response = await client.request("GET", url, timeout=max(0.1, deadline
                                                                    - time.monotonic()))
        except NETWORK_ERRORS:
            response = None
        if response is None or response.status != 200:
            await asyncio.sleep(0.2)  # the replay service or the edge coming back
            continue
        events = [e for e in Decoder().feed(response.body) if isinstance(e, Event) and e.id]
        for event in events:
            payload = tally.parse(event.data)
            if payload is not None:
                seen.setdefault(payload.publisher, set()).add(payload.seq)
        if not events or ids.parse(events[-1].id) >= target:
            return seen
        after = events[-1].id
    return None
