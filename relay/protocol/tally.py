"""What a reader needs to tell the truth about loss and latency, with no I/O.

Shared by ``ssedge drill`` (asyncio readers) and the Locust scenarios (gevent readers in a
process of their own): sans-I/O, like the rest of ``relay.protocol``.

The publisher writes each event's data as ``"<t> <publisher> <seq> <retired> <kind> <pad>"``:
``t`` is the publish time (Unix seconds), ``seq`` counts the publisher's events on that topic
from 1, ``retired`` counts the sequence numbers it gave up on because their publish request
failed (they were never acknowledged, so missing them is not a loss), and ``kind`` is ``e``
for an event or ``f`` for the publisher's last event on the topic. Readers keep a ``Tally``
per connection-lifetime user: gaps in ``seq`` that retired numbers do not explain are lost
events, a ``seq`` seen twice is a duplicate, and one that fills an earlier gap arrived out of
order. SSE ids must also grow strictly: Redis stream ids do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

#: Gaps bigger than this are counted but not remembered number by number.
MAX_REMEMBERED_GAP = 100_000


class Payload(NamedTuple):
    sent_at: float
    publisher: str
    seq: int
    retired: int
    last: bool


def encode(sent_at: float, publisher: str, seq: int, retired: int, last: bool,
           pad: int) -> str:
    """The data of one load event, padded to about ``pad`` extra bytes."""
    kind = "f" if last else "e"
    return f"{sent_at:.6f} {publisher} {seq} {retired} {kind} " + "x" * pad


def parse(data: str) -> Payload | None:
    """The payload of an event a load publisher wrote; ``None`` for any other event."""
    parts = data.split(" ", 5)
    if len(parts) < 5 or parts[4] not in ("e", "f"):
        return None
    try:
        return Payload(float(parts[0]), parts[1], int(parts[2]), int(parts[3]), parts[4] == "f")
    except ValueError:
        return None


def id_key(event_id: str) -> tuple[int, int]:
    """A Redis stream id as a sortable pair (``(-1, -1)`` when it is not one)."""
    ms, _, seq = event_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return -1, -1


@dataclass
class _Source:
    """One publisher's events on one topic, as one reader saw them."""

    last_seq: int
    retired: int
    lost: int = 0
    missing: set[int] = field(default_factory=set)  # numbers in lossy gaps: may still come late
    final_seq: int | None = None


class Verdict(NamedTuple):
    lost: int = 0
    duplicate: bool = False
    late: bool = False


@dataclass
class Tally:
    """Everything one reader received, judged as it arrives."""

    received: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    id_regressions: int = 0
    replayed: int = 0  # received after a reconnect but published before it
    #: the reader left on purpose (a churning reader's visit ended): what was published after
    #: it left is not owed to it, so its tail is not judged
    left: bool = False
    last_id: tuple[int, int] = (-1, -1)
    sources: dict[tuple[str, str], _Source] = field(default_factory=dict)

    def see(self, topic: str, event_id: str, payload: Payload) -> Verdict:
        self.received += 1
        key = id_key(event_id)
        if key <= self.last_id:
            self.id_regressions += 1
        else:
            self.last_id = key
        source = self.sources.get((topic, payload.publisher))
        if source is None:
            # The first event from this publisher sets the baseline: the reader started live.
            self.sources[(topic, payload.publisher)] = _Source(
                payload.seq, payload.retired,
                final_seq=payload.seq if payload.last else None)
            return Verdict()
        if payload.last:
            source.final_seq = payload.seq
        seq = payload.seq
        if seq == source.last_seq + 1:
            source.last_seq, source.retired = seq, payload.retired
            return Verdict()
        if seq > source.last_seq:
            gap = seq - source.last_seq - 1
            explained = payload.retired - source.retired
            lost = max(0, gap - explained)
            source.lost += lost
            if lost and gap <= MAX_REMEMBERED_GAP:
                source.missing.update(range(source.last_seq + 1, seq))
            source.last_seq, source.retired = seq, payload.retired
            return Verdict(lost=lost)
        if seq in source.missing:
            source.missing.discard(seq)
            source.lost = max(0, source.lost - 1)
            self.out_of_order += 1
            return Verdict(late=True)
        self.duplicates += 1
        return Verdict(duplicate=True)

    @property
    def lost(self) -> int:
        """Events missing so far from the middle of what each publisher sent."""
        return sum(s.lost for s in self.sources.values())

    def missing_tail(self) -> tuple[int, int]:
        """(events missing after the last one received, publishers whose last event never came).

        Only meaningful once publishers have sent their last event (``kind`` ``f``).
        """
        tail = unfinished = 0
        for source in self.sources.values():
            if source.final_seq is None:
                unfinished += 1
            else:
                tail += max(0, source.final_seq - source.last_seq)
        return tail, unfinished

    @property
    def publishers(self) -> int:
        return len(self.sources)
