"""HTTP/1.1 chunked transfer coding, undone incrementally and without I/O: the one decoder of
it, for ssedge's HTTP client (``relay.web.client``) and the load readers (``loadtests.sse``),
which read raw bytes off their sockets. Event streams come chunked from every server ssedge
talks to, so the SSE decoder is fed what this one gives back."""

from __future__ import annotations

#: a size line longer than this is not one (RFC 9112 sets no bound; extensions are short)
_SIZE_LINE_MAX = 1024


class BadChunk(ValueError):
    """The bytes are not chunked transfer coding (a size line that is not hex, or endless)."""


class Dechunker:
    """Undoes HTTP/1.1 chunked transfer coding incrementally (RFC 9112 section 7.1)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._left = 0  # payload bytes left in the current chunk
        self._crlf = 0  # bytes of the CRLF after a chunk still to skip
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        buf = self._buffer
        while buf and not self.done:
            if self._crlf:
                skip = min(self._crlf, len(buf))
                del buf[:skip]
                self._crlf -= skip
                continue
            if self._left:
                take = min(self._left, len(buf))
                out += buf[:take]
                del buf[:take]
                self._left -= take
                if not self._left:
                    self._crlf = 2
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > _SIZE_LINE_MAX:
                    raise BadChunk("chunk size line too long")
                break
            line = bytes(buf[:end])
            try:
                size = int(line.split(b";")[0].strip() or b"0", 16)
            except ValueError:
                raise BadChunk(f"bad chunk size line {line[:40]!r}") from None
            del buf[:end + 2]
            if size == 0:
                self.done = True
            else:
                self._left = size
        return bytes(out)
