"""HAProxy's runtime API (``stats socket``, a unix socket): it answers ``show stat`` (CSV)
and takes ``set server relays/relay_1 state maint|ready``. The dashboard reads the edge's
numbers through it; the tests and the harness force a relay out and back with it.
"""

from __future__ import annotations

import csv
import socket
from pathlib import Path


class Admin:
    """HAProxy's runtime API on its ``stats socket``: one command per connection."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    def run(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            s.connect(str(self.path))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def stat(self) -> list[dict[str, str]]:
        """``show stat``: one row per frontend, backend and server (pxname, svname, scur, …)."""
        text = self.run("show stat").lstrip("# ")
        return [row for row in csv.DictReader(text.splitlines()) if row.get("pxname")]

    def servers(self, backend: str = "relays") -> dict[str, str]:
        """Each server of ``backend`` and its status (``UP``, ``DOWN``, ``MAINT``, …)."""
        return {row["svname"]: row["status"] for row in self.stat()
                if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")}

    def set_state(self, server: str, state: str, backend: str = "relays") -> None:
        """``ready``, ``drain`` (no new streams) or ``maint`` (out)."""
        answer = self.run(f"set server {backend}/{server} state {state}").strip()
        if answer:
            raise RuntimeError(f"haproxy: set server {backend}/{server} state {state}: {answer}")
