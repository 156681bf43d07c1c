"""Child processes of local stacks, tests and benchmarks: ports, start, wait, stop.

One set of helpers for ``ssedge up`` (``devstack.single``, ``devstack.cluster``, the
supervisor), the test harness (``harness.servers``, ``harness.edge``, ``harness.cluster``) and
the benchmarks: each child runs in a process group of its own, so it is stopped with
everything it started.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

#: util-linux's setpriv (Debian's essential set): a child told to stop when its parent dies
SETPRIV = shutil.which("setpriv")

# Ports for the servers a test starts, each pytest-xdist worker in a range of its own below
# the kernel's ephemeral range (32768 on): a port picked here is bound later by a child, and
# two workers asking the kernel for "any free port" could be handed the same one between the
# pick and the bind; a relay binds with SO_REUSEPORT and would silently share it. In a worker
# the ports go round their range, so a recently used one (TIME_WAIT, a child still exiting)
# comes back last.
_PORTS_PER_WORKER = 4000
_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
_first = 12000 + _PORTS_PER_WORKER * (int(_worker[2:]) if _worker[2:].isdigit() else 0)
_turn = itertools.count(random.randrange(_PORTS_PER_WORKER))


def free_port() -> int:
    """A loopback port nothing listens on, from this worker's range."""
    for _ in range(_PORTS_PER_WORKER):
        port = _first + next(_turn) % _PORTS_PER_WORKER
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_first}-{_first + _PORTS_PER_WORKER - 1}")


def spawn(argv: list[str], log: Path, env: dict[str, str] | None) -> subprocess.Popen[bytes]:
    """A child in its own process group, its output appended to ``log``, working in the
    log's directory: never in the checkout, where `make up` leaves ``.ssedge/env`` (its
    admin token, its JWT secret), which ``ssedge`` commands read."""
    with open(log, "ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=log.parent)


def wait_until(predicate: Any, timeout: float, what: str, process: subprocess.Popen[bytes]) -> None:
    """Wait until ``predicate``; a process that does not come up is stopped here, so a failed
    start leaves nothing running."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with {process.returncode}")
            if predicate():
                return
            time.sleep(0.05)
    except BaseException:
        # the predicate itself failed (e.g. asyncio.run inside a running loop): the caller
        # never gets the process to stop, so it is stopped here
        stop_group(process, signal.SIGTERM)
        raise
    stop_group(process, signal.SIGTERM)
    raise RuntimeError(f"{what} not up after {timeout} s")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_closed(port: int, host: str = "127.0.0.1", timeout: float = 10) -> None:
    """Before starting again on a port: the last owner's processes may still be exiting
    (the group was signalled, only its leader awaited)."""
    deadline = time.monotonic() + timeout
    while port_open(port, host):
        if time.monotonic() > deadline:
            raise RuntimeError(f"something still listens on {host}:{port}")
        time.sleep(0.05)


def stop_group(process: subprocess.Popen[bytes], sig: int, timeout: float = 10) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()




def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc.

    Not ``killpg(pgid, 0)``: orphans the init process has not reaped yet still count there."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(entry.name))
    return members


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
