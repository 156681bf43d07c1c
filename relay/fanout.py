"""New frames to every connection parked on a topic, from the feed, with no task woken.

A connection that has sent everything in its topic's ring parks (``Topic.park``). When the
feed appends frames, ``deliver`` joins them once and hands the same message to each parked
connection's ``send``, advancing its cursor; the connection's task sleeps on. Per delivery this
is one call into the server instead of a future, a wake-up, a task step and a read of the ring
per connection.

That is only right when a call to ``send`` hands the bytes over at once. Granian's ASGI send
does: it returns an already finished awaitable when its queue for the connection took the
bytes, and a pending one when the client is not reading (the bytes go out, in order, once it
does). A pending send is given to the connection's task to await, so backpressure holds: the
task sends nothing more until the client has taken it, its cursor stops, and the sweep closes
it when it stays too far behind (``Relay._sweep``). With any other server (``send`` a
coroutine function) ``Subscription.send`` stays None and every task writes its own frames.
"""

from __future__ import annotations

from typing import Any

from relay.metrics import Metrics
from relay.topics import Subscription, Topic

_READY: set[type] = set()  # types of awaitables a server returns for a send already done
_READY_NAMES = {("granian._granian", "PyEmptyAwaitable")}


def done_at_once(sent: Any) -> bool:
    """Whether the awaitable a ``send`` call returned says the bytes were taken already."""
    kind = type(sent)
    if kind in _READY:
        return True
    if (kind.__module__, kind.__qualname__) in _READY_NAMES:
        _READY.add(kind)
        return True
    return False


def deliver(topic: Topic, start: int, metrics: Metrics, send_max: int) -> None:
    """Frames ``start`` up to the ring's head are new: send them to every parked connection."""
    parked = topic.parked
    if not parked:
        return
    ring = topic.ring
    end = ring.head
    if start < ring.tail or ring.lag_bytes(start) > send_max:
        # more than one send's worth (or more than the ring kept): each task writes its own
        topic.wake()
        return
    topic.parked = []
    chunk, end = ring.read(start, send_max)
    message = {"type": "http.response.body", "body": chunk, "more_body": True}
    last_id = ring.id_at(end - 1)
    keep: list[Subscription] = []
    sent = 0
    for sub in parked:
        send = sub.send
        waiter = sub.waiter
        if waiter is None or waiter.done():
            continue  # resumed, closed or cancelled since it parked
        if send is None or sub.cursor != start:
            sub.resume()
            continue
        try:
            result = send(message)
        except Exception:  # noqa: BLE001  the task meets the same error and ends the stream
            sub.resume()
            continue
        sub.cursor = end
        sub.last_id = last_id
        sent += 1
        if done_at_once(result):
            keep.append(sub)
        else:
            sub.resume(result)  # the client is slow: its task waits until it took these
    topic.parked.extend(keep)
    metrics.sends += sent
    metrics.parked_sends += sent
    metrics.events_out += sent * (end - start)
    metrics.bytes_out += sent * len(chunk)
