"""One hostile source for the ``hostile`` scenario: raw HTTP/1.1 requests from its own address
(``--ssedge-hostile-source``, 127.0.0.2 by default: the edge's limits key on it, and ``make
up`` exempts only 127.0.0.1), sent exactly as written, odd spellings and absolute-form request
lines among them. Its answers are tallied by kind, not reported as Locust requests: the run
is judged by the ordinary users' objectives, and by one of its own (no operator data leaked).
"""

from __future__ import annotations

import random
import socket
import ssl
import string
from collections import defaultdict
from collections.abc import Callable
from urllib.parse import urlsplit

#: answers by kind: served, refused_limit (200 retry or 429), refused (other 4xx),
#: leaked (an operator endpoint answered 200), failed (no answer)
COUNTS: dict[str, int] = defaultdict(int)

ODD_PATHS = ("/v1/streams/{t}/events/", "//v1/streams/{t}/events", "/v1/streams/{t}/%65vents",
             "/v1/streams/x/../{t}/events", "/v1/streams/./{t}/events")
OPERATOR = ("/metrics", "/readyz", "//metrics", "/%6detrics", "/metrics/")


def _names(rng: random.Random, n: int) -> list[str]:
    return ["hostile-" + "".join(rng.choices(string.ascii_lowercase, k=8)) for _ in range(n)]


class Source:
    """Requests to ``host`` (the edge's URL) from ``address``; ``tls`` wraps https."""

    def __init__(self, host: str, address: str, tls: Callable[[], ssl.SSLContext],
                 hold: int = 100, seed: int | None = None) -> None:
        url = urlsplit(host)
        self.https = url.scheme == "https"
        self.server = (url.hostname or "127.0.0.1", url.port or (443 if self.https else 80))
        self.address = address
        self.tls = tls
        self.hold = hold
        self.held: list[socket.socket] = []
        self.rng = random.Random(seed)

    def _send(self, target: str, method: str = "GET", headers: str = "",
              body: bytes = b"", keep: bool = False) -> tuple[int, str, bytes]:
        sock: socket.socket = socket.create_connection(self.server, timeout=5,
                                                       source_address=(self.address, 0))
        if self.https:
            sock = self.tls().wrap_socket(sock, server_hostname=self.server[0])
        try:
            head = (f"{method} {target} HTTP/1.1\r\nHost: {self.server[0]}\r\n{headers}"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            sock.sendall(head.encode("latin-1") + body)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            head_text, _, rest = data.partition(b"\r\n\r\n")
            lines = head_text.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1]) if lines and lines[0] else 0
            refused = next((line.split(":", 1)[1].strip() for line in lines[1:]
                            if line.lower().startswith("x-ssedge-refused:")), "")
            if keep and status == 200 and not refused:
                self._keep(sock)
                return status, refused, rest
            sock.close()
            return status, refused, rest
        except BaseException:
            sock.close()
            raise

    def _keep(self, sock: socket.socket) -> None:
        self.held.append(sock)
        while len(self.held) > self.hold:
            self.held.pop(0).close()

    def _tally(self, status: int, refused: str, operator: bool = False) -> None:
        if status == 429 or refused == "limit":
            COUNTS["refused_limit"] += 1
        elif operator and status == 200:
            COUNTS["leaked"] += 1
        elif 400 <= status < 500:
            COUNTS["refused"] += 1
        else:
            COUNTS["served"] += 1

    def once(self) -> None:
        """One abuse, picked at random: streams on 16 random topics (held open when served),
        a replay page after a random id, an odd spelling of a stream, an operator endpoint
        in some spelling or absolute form, a publish with a made-up token."""
        rng = self.rng
        kind = rng.choices(("stream", "replay", "odd", "operator", "publish"),
                           (50, 25, 10, 5, 10))[0]
        try:
            if kind == "stream":
                query = "&".join(f"topic={t}" for t in _names(rng, 16))
                self._tally(*self._send(f"/v1/streams/events?{query}", keep=True)[:2])
            elif kind == "replay":
                after = f"{rng.randrange(1, 2**41)}-{rng.randrange(100)}"
                self._tally(*self._send(f"/v1/replay/{_names(rng, 1)[0]}?after={after}")[:2])
            elif kind == "odd":
                path = rng.choice(ODD_PATHS).format(t=_names(rng, 1)[0])
                self._tally(*self._send(path)[:2])
            elif kind == "operator":
                path = rng.choice(OPERATOR)
                if rng.random() < 0.5:  # absolute form, as to a proxy
                    path = f"http://{self.server[0]}{path}"
                self._tally(*self._send(path)[:2], operator=True)
            else:
                token = "".join(rng.choices(string.ascii_letters, k=24))
                self._tally(*self._send(
                    f"/v1/streams/{_names(rng, 1)[0]}/events", "POST",
                    f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n",
                    b'{"data": "hostile"}')[:2])
        except (OSError, ValueError, IndexError):
            COUNTS["failed"] += 1

    def close(self) -> None:
        for sock in self.held:
            sock.close()
        self.held.clear()
