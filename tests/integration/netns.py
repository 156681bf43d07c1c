"""A network namespace joined to this one by a veth pair: clients that can vanish for real.

On loopback a peer cannot disappear: when a process dies its kernel sends FIN or RST. A client
inside its own namespace can: once the namespace's end of the veth pair is down, every packet
to it is dropped without an answer, exactly like a client whose network went away (no FIN,
no RST). Creating namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN); ``Island.open``
says why when it cannot.

Every process started inside is stopped by its PID, and the namespace (with its veth pair)
is deleted on exit.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Island:
    """Namespace ``name``; the host end of the link is ``host_addr``, the inside ``addr``."""

    def __init__(self, tag: int) -> None:
        # names and a /30 unique to this test process: others may run tests at the same time
        self.name = f"ssedge-{tag}"
        self.host_if, self.inner_if = f"sxh{tag}", f"sxn{tag}"
        net = f"10.{200 + tag % 50}.{tag // 50 % 250}"
        self.host_addr, self.addr = f"{net}.1", f"{net}.2"
        self.processes: list[subprocess.Popen[bytes]] = []

    @classmethod
    @contextlib.contextmanager
    def open(cls) -> Iterator[Island]:
        island = cls(os.getpid() % 100_000)
        try:
            island._create()
        except (OSError, subprocess.CalledProcessError) as exc:
            island._delete()
            detail = getattr(exc, "stderr", b"") or b""
            raise RuntimeError(f"cannot create a network namespace (needs root): {exc} "
                               f"{detail.decode(errors='replace').strip()}") from exc
        try:
            yield island
        finally:
            for process in island.processes:
                if process.poll() is None:
                    process.kill()
                    process.wait(10)
                if process.stdout is not None:
                    process.stdout.close()
            island._delete()

    def _create(self) -> None:
        _ip("netns", "add", self.name)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.inner_if)
        _ip("link", "set", self.inner_if, "netns", self.name)
        _ip("addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("-n", self.name, "addr", "add", f"{self.addr}/30", "dev", self.inner_if)
        _ip("-n", self.name, "link", "set", self.inner_if, "up")

    def _delete(self) -> None:
        # deleting the namespace destroys the veth pair (both ends) with it
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=10)

    def spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        """A process inside the namespace; its stdout is a pipe, stderr goes to ``log``."""
        with open(log, "ab") as err:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.name, sys.executable, *argv],
                stdout=subprocess.PIPE, stderr=err, cwd=Path(__file__).parents[2],
            )
        self.processes.append(process)
        return process

    def cut(self) -> None:
        """Take the inside end of the link down: from now on packets vanish both ways."""
        _ip("-n", self.name, "link", "set", self.inner_if, "down")
