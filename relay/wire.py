"""The SSE wire format, sans I/O: an encoder and an incremental decoder.

Per the WHATWG HTML "server-sent events" section (9.2). No asyncio, Redis or server imports:
the relay, the replay service, the CLI, the tests and the Locust users all frame and parse
with this one module.

Encoder rules: data is split on CRLF, CR and LF into one ``data:`` line each, so no published
content can start a new field or a new event; CR, LF and NUL are refused in ``id`` and
``event`` (they would end the field early); ``retry`` is digits only.

Decoder rules: a leading BOM is stripped; lines end at CRLF, LF or CR, and a CR at the end of
a chunk is held back until the next byte shows whether an LF follows it; nothing is
dispatched for an event with an empty data buffer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BOM = b"\xef\xbb\xbf"
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_FORBIDDEN_IN_FIELD = re.compile(rb"[\r\n\x00]")


class WireError(ValueError):
    """A value that cannot be framed without breaking the event stream."""


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event, as an EventSource would see it."""

    data: str
    event: str = "message"
    id: str = ""


@dataclass(frozen=True, slots=True)
class Comment:
    """A comment line (``: text``); servers send them as keep-alives."""

    text: str


# ---------------------------------------------------------------------------------------------
# Encoder


def _field(value: str | bytes, name: str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    if _FORBIDDEN_IN_FIELD.search(raw):
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
    """

    def __init__(self, *, comments: bool = False) -> None:
        self._comments = comments
        self._pending = b""
        self._started = False
        self._data: list[str] = []
        self._event = ""
        self._id_buffer = ""
        self.last_event_id = ""
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[Event | Comment]:
        buf = self._pending + chunk
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._pending = buf  # could still become a BOM: wait for more
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[len(_BOM) :]
        out: list[Event | Comment] = []
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
            self._line(buf[start:end].decode("utf-8", "replace"), out)
            start = nxt
        self._pending = buf[start:]
        return out

    def _line(self, line: str, out: list[Event | Comment]) -> None:
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
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self._id_buffer = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)

    def _dispatch(self, out: list[Event | Comment]) -> None:
        self.last_event_id = self._id_buffer
        if not self._data:
            self._event = ""
            return
        out.append(Event("\n".join(self._data), self._event or "message", self.last_event_id))
        self._data = []
        self._event = ""
