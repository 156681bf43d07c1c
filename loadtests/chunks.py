"""HTTP/1.1 chunked transfer coding, undone incrementally (the load readers read raw bytes)."""

from __future__ import annotations


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
                if len(buf) > 1024:
                    raise ValueError("chunk size line too long")
                break
            size = int(bytes(buf[:end]).split(b";")[0].strip() or b"0", 16)
            del buf[:end + 2]
            if size == 0:
                self.done = True
            else:
                self._left = size
        return bytes(out)
