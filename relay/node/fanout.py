"""New frames to every connection parked on a topic, from the feed, with no task woken.

A connection that has sent everything in its topic's ring parks (``Topic.park``). When the
feed appends frames, ``kick`` starts a pass over the parked connections: the new frames are
joined once (in sends of at most ``send_bytes``) and the same messages go to each one's
``send``, advancing its cursor; the connection's task sleeps on. Per delivery this is a call
into the server instead of a future, a wake-up, a task step and a read of the ring per
connection.

A pass over many connections yields to the event loop every ``SLICE`` sends, in a task of its
own: the feed goes on reading meanwhile, and the connections later in the pass get what it
appended in the same send (as woken tasks each reading the ring did). A few parked connections
are served at once, without a task.

That is only right when a call to ``send`` hands the bytes over at once. Granian's ASGI send
does: it returns an already finished awaitable when its queue for the connection took the
bytes, and a pending one when the client is not reading (the bytes go out, in order, once it
does). A pending send is given to the connection's task to await, so backpressure holds: the
task sends nothing more until the client has taken it, its cursor stops, and the sweep closes
it when it stays too far behind (``Relay._sweep``). With any other server (``send`` a
coroutine function) ``Subscription.send`` stays None and every task writes its own frames.

"Taken" is not "written": Granian takes a send into a queue of its own for the connection, so
a client that does not read holds several sends in the relay before one is left pending
(``HELD_SENDS``), each a copy of its own. What bounds that copy per client
(``client_queue_bytes``) is the size of each send (``send_bytes``), whoever makes it: the
fan-out, a stream's task (``write``) or ``flush``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from relay.node.metrics import Metrics
from relay.node.topics import Subscription, Topic
from relay.protocol.deflate import Shared
from relay.protocol.multi import MultiReader, Span
from relay.protocol.ring import Ring
from relay.web.http import Send

SLICE = 256  # sends between two yields to the event loop in one pass

# Sends a connection whose client does not read holds in the relay, beyond the kernel's
# buffers, counted generously (measured with granian 2.8.9, hyper 1.x; docs/results/
# stuck-clients.md): hyper's write buffer (8 KiB, relay.node.server) and the send that
# overfills it, Granian's body channel (4 sends), the send left pending, and the chunk the
# stream's task holds while it awaits that one; 8 KiB more for hyper's buffer makes 8.
HELD_SENDS = 8

_READY: set[type] = set()  # types of awaitables a server returns for a send already done
_READY_NAMES = {("granian._granian", "PyEmptyAwaitable")}

# one send of a pass: (message, the cursor after it, id of its last frame, frames, bytes)
_Piece = tuple[dict[str, Any], int, int, int, int]
# per pass: a connection's cursor -> (ring head, its sends up to the head, id of its first
# frame, whether they reach the head: not when a frame larger than a send comes first)
_Chunks = dict[int, tuple[int, list[_Piece], int, bool]]
# per call of _send: a cursor of a stream on several topics -> its frames cut for re-framing,
# or None when there is more than one send's worth (or it is gone from the ring)
_Spans = dict[int, Span | None]
# per call of _send: a compressed connection's next shared segment -> the send of the shared
# bytes from there: (message, cursor before, cursor after, segment after, first id, last id)
_Shared = dict[int | None, tuple[dict[str, Any], int, int, int, int, int]]


def send_bytes(client_queue_bytes: int, send_max_bytes: int) -> int:
    """The most bytes of one send to a stream: a client that does not read holds
    ``HELD_SENDS`` of them at most (``client_queue_bytes``), readers get up to
    ``send_max_bytes`` in one."""
    return max(1024, min(send_max_bytes, client_queue_bytes // HELD_SENDS))


async def write(send: Send, body: bytes, size: int) -> None:
    """``body`` sent in pieces of at most ``size`` bytes, each awaited: a frame larger than a
    send (an event of a megabyte) is held once in the ring, never whole per client."""
    if len(body) <= size:
        await send({"type": "http.response.body", "body": body, "more_body": True})
        return
    for start in range(0, len(body), size):
        await send({"type": "http.response.body", "body": body[start:start + size],
                    "more_body": True})


def done_at_once(sent: Any) -> bool:
    """Whether the awaitable a ``send`` call returned says the bytes were taken already."""
    kind = type(sent)
    if kind in _READY:
        return True
    if (kind.__module__, kind.__qualname__) in _READY_NAMES:
        _READY.add(kind)
        return True
    return False


class _AtOnce:
    """Sends made at once (without a task) since the event loop last ran anything else.

    One read of the feed may bring many topics, each with a few parked connections: made at
    once, every pass of the read ran before the feed could read again or anything was
    written (a read of 64 topics with 125 streams on each held the loop about 30 ms, and the
    next read brought more). Past ``SLICE`` sends in one turn of the loop, passes go to
    tasks that yield, as a pass over many connections does."""

    __slots__ = ("sends",)

    def __init__(self) -> None:
        self.sends = 0

    def take(self, n: int) -> bool:
        if self.sends >= SLICE:
            return False
        if not self.sends:
            asyncio.get_running_loop().call_soon(self.reset)
        self.sends += n
        return True

    def reset(self) -> None:
        self.sends = 0


_at_once = _AtOnce()


def kick(topic: Topic, metrics: Metrics, send_max: int) -> None:
    """The topic's ring has new frames: send them to its parked connections."""
    if topic.fanning is not None:
        return  # a pass under way sees them: it runs until every connection has all
    if len(topic.parked) <= SLICE and _at_once.take(len(topic.parked)):
        topic.parked = _send(topic, topic.parked, metrics, send_max, {})  # all kept have all
    else:
        topic.fanning = asyncio.ensure_future(_passes(topic, metrics, send_max))


def _behind(topic: Topic) -> bool:
    head = topic.ring.head
    return any(sub.cursor != head for sub in topic.parked)


async def _passes(topic: Topic, metrics: Metrics, send_max: int) -> None:
    try:
        while topic.parked:
            parked, topic.parked = topic.parked, []
            keep: list[Subscription] = []
            chunks: _Chunks = {}
            try:
                for i in range(0, len(parked), SLICE):
                    if i:
                        await asyncio.sleep(0)
                    keep += _send(topic, parked[i:i + SLICE], metrics, send_max, chunks)
            except BaseException:  # cancelled (shutdown): no connection is left parked unseen
                for sub in parked:
                    sub.resume()
                raise
            # those that parked during the pass come after
            topic.parked = keep + topic.parked
            if not _behind(topic):
                return
    finally:
        topic.fanning = None


def _send(topic: Topic, parked: list[Subscription], metrics: Metrics, send_max: int,
          chunks: _Chunks) -> list[Subscription]:
    """Send each parked connection what it lacks; those still parked after it."""
    ring = topic.ring
    head = ring.head
    keep: list[Subscription] = []
    sent = events = nbytes = 0
    spans: _Spans = {}
    flushing: list[Subscription] = []
    shared = topic.shared
    same: _Shared = {}
    if shared is not None:  # compressed once here for every compressed client of the pass
        shared.sync(ring, time.monotonic())
        shared.trim(ring)
    for sub in parked:
        waiter = sub.waiter
        if waiter is None or waiter.done():
            continue  # resumed, closed or cancelled since it parked
        cursor = sub.cursor
        if cursor == head:
            keep.append(sub)
            continue
        send = sub.send
        if send is None:  # a server whose send must be awaited: the task writes its own
            sub.resume()
            continue
        if sub.multi is not None:  # one of several topics: this client's ids, its own bytes
            size = _send_multi(sub, sub.multi, ring, send_max, keep, spans)
            if size:
                events += head - cursor
                nbytes += size
                if len(sub.multi.outbox) == 1:  # the first of this read: flush it soon
                    flushing.append(sub)
            continue
        if sub.coding is not None and shared is not None:
            size = _send_shared(sub, shared, ring, send_max, keep, same)
            sent += size > 0
            metrics.shared_sends += size > 0
            events += sub.cursor - cursor
            nbytes += size
            continue
        chunk = chunks.get(cursor)
        if chunk is None or chunk[0] != head:
            if cursor < ring.tail or ring.lag_bytes(cursor) > HELD_SENDS * send_max:
                # many sends' worth, or gone from the ring: the task writes its own
                sub.resume()
                continue
            chunk = chunks[cursor] = _pieces(ring, cursor, send_max)
        if chunk[2] <= sub.last_id or not chunk[1]:
            # the client has these already (it came from a node whose feed is ahead): its
            # task skips them (resume.Reader.next_chunk); never an id at or below its own.
            # Or a frame larger than a send: its task sends it in pieces (``write``)
            sub.resume()
            continue
        for message, end, last_id, frames, size in chunk[1]:
            try:
                result = send(message)
            except Exception:  # noqa: BLE001  the task meets the same error, ends the stream
                sub.resume()
                break
            sub.cursor = end
            sub.last_id = last_id
            sent += 1
            events += frames
            nbytes += size
            if not done_at_once(result):
                # the client is slow: its task waits until it took this, and sends the rest
                # itself; nothing more is handed to the server for it meanwhile
                sub.resume(result)
                break
        else:
            if chunk[3]:
                keep.append(sub)
            else:
                sub.resume()  # a frame larger than a send follows: its task sends it
    metrics.sends += sent
    metrics.parked_sends += sent
    metrics.events_out += events
    metrics.bytes_out += nbytes
    if flushing:
        asyncio.get_running_loop().call_soon(flush, flushing, metrics, send_max)
    return keep


def _send_shared(sub: Subscription, shared: Shared, ring: Ring, send_max: int,
                 keep: list[Subscription], same: _Shared) -> int:
    """A parked compressed connection: the topic's shared bytes when it is on them (or joins
    them here, at an epoch start), else its task sends its own (``relay.node.shared``). The
    bytes sent, or 0. Connections at the same segment and position get the same message,
    worked out once per pass (``same``)."""
    send, coding = sub.send, sub.coding
    assert coding is not None and send is not None
    cursor = sub.cursor
    hit = same.get(coding.segment)
    if hit is not None and hit[1] == cursor and sub.last_id < hit[4]:
        message, _, end, segment, _, last_id = hit  # (every stream sent its header first)
    else:
        before = coding.segment
        taken = shared.take(coding, ring, cursor, sub.last_id, send_max)
        if taken is None or not taken[0] or len(taken[0]) > send_max:
            sub.resume()  # its own bytes, nothing new, or more than a send: its task writes
            return 0
        body, end = taken
        if end == cursor:  # keep-alives only
            end, last_id = cursor, sub.last_id
        else:
            last_id = ring.id_at(end - 1)
        after = coding.segment
        assert after is not None  # on the shared bytes: take set it
        segment = after
        message = {"type": "http.response.body", "body": body, "more_body": True}
        if before is not None and end > cursor:
            same[before] = (message, cursor, end, segment, ring.id_at(cursor), last_id)
    try:
        result = send(message)
    except Exception:  # noqa: BLE001  the task meets the same error, ends the stream
        coding.segment = None  # not sent: it may not go on with the shared bytes
        sub.resume()
        return 0
    coding.segment = segment
    sub.cursor = end
    sub.last_id = last_id
    if not done_at_once(result):
        sub.resume(result)
    elif end == ring.head:
        keep.append(sub)
    else:
        sub.resume()
    return len(message["body"])


def _pieces(ring: Ring, cursor: int, size: int) -> tuple[int, list[_Piece], int, bool]:
    """The frames from ``cursor`` to the head, cut into sends of at most ``size`` bytes (a
    frame is never split: the sends stop before one larger than ``size``)."""
    head = ring.head
    out: list[_Piece] = []
    at = cursor
    while at < head:
        body, end = ring.read(at, size)
        if len(body) > size:
            break
        out.append(({"type": "http.response.body", "body": body, "more_body": True}, end,
                    ring.id_at(end - 1), end - at, len(body)))
        at = end
    return head, out, ring.id_at(cursor), at == head


def _send_multi(sub: Subscription, multi: MultiReader, ring: Ring, send_max: int,
                keep: list[Subscription], spans: _Spans) -> int:
    """A parked cursor of a stream on several topics (``relay.node.multistream``): the new
    frames of its topic re-framed with the client's composite ids (``MultiReader.ring_span``)
    and queued in its outbox, when the same rules as for any connection allow; else its task
    writes them. The bytes queued, or 0. The frames are cut once per cursor position
    (``spans``)."""
    cursor, head = sub.cursor, ring.head
    if cursor in spans:
        span = spans[cursor]
    else:
        span = None
        if cursor >= ring.tail and ring.lag_bytes(cursor) <= send_max:
            span = Span(multi.set.tags[multi.index(sub)], ring, cursor, head)
        spans[cursor] = span
    if multi.awake or span is None or span.keys[0] <= sub.last_id:
        # its task runs (only one writer builds its ids), more than a send's worth, gone from
        # the ring, or ids the client has (resume.Reader skips them): the task sees to it
        sub.resume()
        return 0
    body = multi.ring_span(sub, span)
    sub.cursor = head
    keep.append(sub)
    multi.outbox.append(body)
    return len(body)


def flush(subs: list[Subscription], metrics: Metrics, send_max: int) -> None:
    """Hand each connection's outbox to the server in one send (in sends of at most
    ``send_max`` bytes when it is larger, until one is left pending).

    Called soon after the feed's delivery, once every topic it read has had its pass: what
    several topics brought a client in one read goes out in one write, as the frames of one
    topic do. Nothing else can write to the connection in between: its task is parked (it
    would have been handed the cursor instead), and a task woken meanwhile runs after this
    (the loop runs callbacks in order), and writes any outbox left first anyway."""
    sent = 0
    for sub in subs:
        multi = sub.multi
        if multi is None or not multi.outbox:
            continue  # sent already (by an earlier flush, or by its task)
        body = multi.take_outbox()
        send = sub.send
        if sub.closed_because is not None or send is None:
            continue
        for start in range(0, len(body), send_max):
            piece = body if len(body) <= send_max else body[start:start + send_max]
            try:
                result = send({"type": "http.response.body", "body": piece, "more_body": True})
            except Exception:  # noqa: BLE001  the task meets the same error and ends the stream
                sub.resume()
                break
            sent += 1
            if not done_at_once(result):
                # the client is slow: its task waits until it took these, then writes the
                # rest. Its cursors stay in their parked lists (a pass hands them back to the
                # running task): resuming this one would leave it listed without a waiter,
                # and listed twice once it parks
                rest = body[start + send_max:]
                if rest:
                    multi.outbox.append(rest)
                sub.pending = result
                multi.wake()
                break
    metrics.sends += sent
    metrics.parked_sends += sent
