"""Run inside a network namespace (``netns.Island``): open event streams and idle keep-alive
connections to a relay, print ``ready`` and then hold them without reading until killed.

    python -m tests.integration.vanishing_client HOST PORT TOPIC STREAMS IDLE
"""

from __future__ import annotations

import socket
import sys
import time


def _connect(host: str, port: int, request: bytes, until: bytes) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(request)
    got = b""
    while until not in got:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit(f"connection closed before {until!r}: {got!r}")
        got += chunk
    return sock


def main() -> None:
    host, port, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    streams, idle = int(sys.argv[4]), int(sys.argv[5])
    held = [
        # subscribed once retry: arrived; from then on nothing is read (the kernel still ACKs)
        _connect(host, port, f"GET /v1/streams/{topic}/events HTTP/1.1\r\nHost: x\r\n\r\n"
                 .encode(), b"retry:")
        for _ in range(streams)
    ] + [
        # a keep-alive connection that answered one request and then stays silent
        _connect(host, port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"\"ok\"")
        for _ in range(idle)
    ]
    print("ready", len(held), flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main()
