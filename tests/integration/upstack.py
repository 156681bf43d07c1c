"""``ssedge up`` as a test runs it: on free loopback ports, in a temporary directory, its
children found through the supervisor's status file.

The stack and each of its children run in process groups of their own. ``stop()`` sends the
stack SIGINT (it stops its children in order), then, whatever happened, SIGKILLs every group
the status file names and the stack's own: a test leaves nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from relay.harness.processes import free_port, group_members, kill_group
from relay.web import client

SSEDGE = [sys.executable, "-m", "relay"]
BANNER = "Ctrl-C stops everything."


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSEDGE_")}
    env.update(extra)
    return env


class UpStack:
    """A running ``ssedge up``; ``args`` are extra flags, ``env`` extra environment."""

    def __init__(self, directory: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port() for name in
                      ("redis", "relay-1", "relay-2", "replay", "edge", "tls", "upstream",
                       "ingest")}
        self.edge = f"http://127.0.0.1:{self.ports['edge']}"
        self.output = directory.parent / f"{directory.name}-up.log"
        argv = [*SSEDGE, "up", "--dir", str(directory),
                "--redis-port", str(self.ports["redis"]),
                "--relay-port", str(self.ports["relay-1"]),
                "--relay-port", str(self.ports["relay-2"]),
                "--replay-port", str(self.ports["replay"]), "--edge-port", str(self.ports["edge"]),
                "--tls-port", str(self.ports["tls"]),
                "--upstream-port", str(self.ports["upstream"]),
                "--ingest-port", str(self.ports["ingest"]), *args]
        with open(self.output, "ab") as out:
            self.process = subprocess.Popen(argv, env=clean_env(**(env or {})), stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self._pgids: set[int] = set()

    # -- what it says -----------------------------------------------------------------------

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while BANNER not in self.log():
            if self.process.poll() is not None:
                raise AssertionError(f"ssedge up exited ({self.process.returncode}):\n"
                                     + self.log())
            if time.monotonic() > deadline:
                raise AssertionError("ssedge up not up in time:\n" + self.log())
            time.sleep(0.1)
        self.status()

    @property
    def token(self) -> str:
        return (self.directory / "publish-token").read_text().strip()

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = json.loads((self.directory / "supervisor.json").read_text())
        self._pgids.update(c["pid"] for c in status["children"] if c["pid"])
        return status

    def child(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = next(c for c in self.status()["children"] if c["name"] == name)
        return found

    def wait_child(self, name: str, *, restarts: int, timeout: float = 30) -> dict[str, Any]:
        """The child once it is up again after ``restarts`` restarts."""
        deadline = time.monotonic() + timeout
        while True:
            child = self.child(name)
            if child["state"] == "up" and child["restarts"] >= restarts:
                return child
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} not back: {child}\n{self.log()[-2000:]}")
            time.sleep(0.05)

    # -- stopping ---------------------------------------------------------------------------

    def stop(self, timeout: float = 60) -> int:
        """Ctrl-C, then SIGKILL for anything still there; the stack's exit code."""
        with contextlib.suppress(OSError, ValueError):
            self.status()  # the latest pids
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_group(self.process.pid)
                self.process.wait()
        for pgid in self._pgids:
            if group_members(pgid):
                kill_group(pgid)
        return self.process.returncode


def get(url: str, timeout: float = 3) -> client.Response | None:
    """A GET's answer, or None when nothing answered."""
    try:
        return asyncio.run(client.request("GET", url, timeout=timeout))
    except (OSError, TimeoutError, asyncio.IncompleteReadError, client.ProtocolError):
        return None


def wait_for(predicate: Any, what: str, timeout: float = 20) -> float:
    """Seconds until ``predicate()`` held."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not after {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started
