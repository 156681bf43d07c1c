"""The SSE wire format, sans I/O: an encoder and an incremental decoder.

Per the WHATWG HTML "server-sent events" section (9.2). No asyncio, Redis or server imports:
the relay, the replay service, the CLI, the tests and the Locust users all frame and parse
with this one module.

Encoder rules: data is split on CRLF, CR and LF into one ``data:`` line each, so no published
content can start a new field or a new event; CR, LF and NUL are refused in ``id`` and
``event`` (they would end the field early); ``retry`` is digits only.

Decoder rules: a leading BOM is stripped; lines end at CRLF, LF or CR, and a CR at the end of
a chunk is held back until the next byte shows whether an LF follows it; nothing is
dispatched for an event with an empty data buffer. With ``max_data``, what a peer that never
ends an event or a line can make it hold is bounded (``Oversize``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from relay.protocol import names

_BOM = b"\xef\xbb\xbf"
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_KEPT_OF_LONG_LINE = 16  # of a line over the bound, enough to read its field name


class WireError(ValueError):
    """A value that cannot be framed without breaking the event stream."""


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event, as an EventSource would see it."""

    data: str
    event: str = "message"
    id: str = ""
    # fields other than data, event, id and retry, in order; an EventSource ignores them, and
    # so does this decoder unless asked (``Decoder(extra_fields=True)``)
    extra: tuple[tuple[str, str], ...] = ()
    # whether the event had an ``id:`` line of its own (else ``id`` is the one carried on):
    # tells an upstream's inclusive resume (it repeats the event named in Last-Event-ID, with
    # its id) from a new event without an id
    own_id: bool = field(default=True, compare=False)


@dataclass(frozen=True, slots=True)
class Comment:
    """A comment line (``: text``); servers send them as keep-alives."""

    text: str


@dataclass(frozen=True, slots=True)
class Oversize:
    """An event whose data was over the decoder's ``max_data``: dispatched without it."""

    size: int  # bytes of data lines, about (characters of the lines that were kept)
    event: str = "message"
    id: str = ""


Item = Event | Comment | Oversize


# ---------------------------------------------------------------------------------------------
# Encoder


def _field(value: str | bytes, name: str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    if not names.field_value_ok(raw):
        raise WireError(f"{name} must not contain CR, LF or NUL")
    return raw


def encode_data(data: bytes) -> bytes:
    """The ``data:`` lines for ``data``, one per line of it."""
    if b"\r" not in data and b"\n" not in data:
        return b"data: " + data + b"\n"
    return b"".join(b"data: " + line + b"\n" for line in _LINE_BREAK.split(data))


def encode_event(
    data: str | bytes,
    *,
    id: str | bytes | None = None,
    event: str | bytes | None = None,
) -> bytes:
    """One complete event frame, ending with its blank line."""
    parts = []
    if id is not None:
        parts.append(b"id: " + _field(id, "id") + b"\n")
    if event is not None:
        parts.append(b"event: " + _field(event, "event") + b"\n")
    parts.append(encode_data(data.encode() if isinstance(data, str) else data))
    parts.append(b"\n")
    return b"".join(parts)


def encode_entry(entry_id: bytes, data: bytes,
                 fields: Sequence[tuple[bytes, bytes | None]] = ()) -> tuple[bytes, bool]:
    """The frame of a stream entry, and whether every field could go in it.

    ``fields`` are (line name, value) pairs (``event``, ``upstream``, …) in order, None for
    absent. Entries come from any producer, so they are framed defensively: a value that is
    empty or would break its line (``names.field_value_ok``) is left out, the event goes out
    without it, and the entry is reported as malformed."""
    head = b"id: " + entry_id + b"\n"
    if not fields:  # published entries (data alone): the fast path of every live event
        return head + encode_data(data) + b"\n", True
    ok = True
    for name, value in fields:
        if value is None:
            continue
        if not value or not names.field_value_ok(value):
            ok = False
            continue
        head += name + b": " + value + b"\n"
    return head + encode_data(data) + b"\n", ok


def split_frames(body: bytes) -> list[tuple[bytes, bytes]]:
    """(id, frame) pairs of a body made of frames this module encoded (a history page).

    Each starts with its ``id:`` line and no line inside one is empty (data lines keep their
    ``data: `` prefix), so a blank line is always a frame's end."""
    out = []
    for part in body.split(b"\n\n"):
        if not part:
            continue
        if not part.startswith(b"id: "):
            raise WireError("a page holds ssedge frames only, each starting with its id")
        end = part.find(b"\n")
        out.append((part[4:end] if end != -1 else part[4:], part + b"\n\n"))
    return out


#: the start of a frame's ``id:`` line; every frame this module writes starts with it (a stream
#: on several topics rewrites that line alone: ``relay.protocol.multi``)
ID_FIELD = b"id: "


def event_and_data(event: str) -> bytes:
    """The ``event:`` line of a frame and the start of its one ``data:`` line."""
    return b"event: " + _field(event, "event") + b"\ndata: "


def encode_position(id: str | bytes) -> bytes:
    """A frame that sets the client's last event id and dispatches nothing (an ``id:`` line
    and the blank line, no data): by WHATWG an EventSource takes the id at the blank line and
    dispatches no event without data. A stream opens with it, so a client that drops before
    its first event comes back from where it joined instead of from "now" again."""
    return b"id: " + _field(id, "id") + b"\n\n"


def encode_comment(text: str = "") -> bytes:
    """A comment frame; a multi-line text becomes several comment lines."""
    lines = _LINE_BREAK.split(text.encode()) if text else [b""]
    return b"".join(b": " + line + b"\n" if line else b":\n" for line in lines) + b"\n"


def encode_retry(ms: int) -> bytes:
    """The ``retry:`` field that sets the client's reconnection delay."""
    if isinstance(ms, bool) or not isinstance(ms, int) or ms < 0:
        raise WireError("retry must be a non-negative integer of milliseconds")
    return b"retry: %d\n\n" % ms


# ---------------------------------------------------------------------------------------------
# Decoder


class Decoder:
    """Incremental SSE parser: feed it bytes as they come, get events back.

    ``last_event_id`` and ``retry`` hold the stream's state as the spec defines it, so a client
    reconnects with ``Last-Event-ID: decoder.last_event_id`` after ``decoder.retry`` ms.

    With ``max_data`` set, what a peer can make it hold is bounded: an event whose data grows
    past ``max_data`` bytes is parsed to its end without keeping the data and comes out as
    ``Oversize`` (its id and type known, so a reader can account for it), and of a line longer
    than that only its first bytes are kept.
    """

    def __init__(self, *, comments: bool = False, extra_fields: bool = False,
                 max_data: int | None = None, last_event_id: str = "") -> None:
        self._comments = comments
        self._keep_extra = extra_fields
        self._max_data = max_data
        self._pending = b""
        self._started = False
        self._data: list[str] = []
        self._data_size = 0
        self._oversize = 0  # data bytes of the event in progress that were dropped
        self._cutting = False  # inside an over-long line: its bytes are dropped up to its end
        self._cut = 0  # bytes dropped from the line in progress
        self._event = ""
        self._extra: list[tuple[str, str]] = []
        # a reconnection's decoder starts from the id it resumed after: an event without an
        # ``id:`` line carries it on, as browsers keep an EventSource's last event id across
        # connections (Chromium hands it to each new connection's parser). Starting empty
        # would make such an event erase the resume position.
        self._id_buffer = last_event_id
        self._own_id = False
        self.last_event_id = last_event_id
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[Item]:
        if self._cutting:
            brk = min((i for i in (chunk.find(b"\r"), chunk.find(b"\n")) if i != -1),
                      default=-1)
            if brk == -1:
                self._cut += len(chunk)
                return []
            self._cut += brk
            chunk = chunk[brk:]
            self._cutting = False
        buf = self._pending + chunk
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._pending = buf  # could still become a BOM: wait for more
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[len(_BOM) :]
        out: list[Item] = []
        start = 0
        size = len(buf)
        while start < size:
            cr = buf.find(b"\r", start)
            lf = buf.find(b"\n", start)
            if cr == -1 and lf == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                end, nxt = lf, lf + 1
            elif cr == size - 1:
                break  # a CR at the chunk's end: the next byte may be its LF
            else:
                end = cr
                nxt = cr + 2 if buf[cr + 1 : cr + 2] == b"\n" else cr + 1
            line = buf[start:end].decode("utf-8", "replace")
            if self._cut:
                self._cut_line(line, self._cut)
                self._cut = 0
            else:
                self._line(line, out)
            start = nxt
        self._pending = buf[start:]
        limit = self._max_data
        if (limit is not None and len(self._pending) > limit
                and not self._pending.endswith(b"\r")):
            # keep the start of the line (its field name), drop the rest up to its end
            self._cut += len(self._pending) - _KEPT_OF_LONG_LINE
            self._pending = self._pending[:_KEPT_OF_LONG_LINE]
            self._cutting = True
        return out

    def _line(self, line: str, out: list[Item]) -> None:
        if not line:
            self._dispatch(out)
            return
        if line[0] == ":":
            if self._comments:
                text = line[1:]
                out.append(Comment(text[1:] if text.startswith(" ") else text))
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            size = self._data_size + len(value) + 1
            if self._oversize or (self._max_data is not None and size - 1 > self._max_data):
                self._oversize += size
                self._data, self._data_size = [], 0
            else:
                self._data.append(value)
                self._data_size = size
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self._id_buffer = value
                self._own_id = True
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry = int(value)
        elif self._keep_extra:
            self._extra.append((name, value))

    def _cut_line(self, line: str, dropped: int) -> None:
        """A line longer than ``max_data``: a data line makes its event oversize; any other
        field (or comment) that long is ignored, its value incomplete."""
        if line.partition(":")[0] == "data":
            self._oversize += self._data_size + len(line) + dropped
            self._data, self._data_size = [], 0

    def _dispatch(self, out: list[Item]) -> None:
        self.last_event_id = self._id_buffer
        extra, self._extra = tuple(self._extra), []
        if self._oversize:
            out.append(Oversize(self._oversize, self._event or "message", self.last_event_id))
            self._oversize = 0
        elif self._data:
            out.append(Event("\n".join(self._data), self._event or "message",
                             self.last_event_id, extra, self._own_id))
        self._data = []
        self._data_size = 0
        self._event = ""
        self._own_id = False
