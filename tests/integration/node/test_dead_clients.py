"""Clients that vanish from the network (no FIN, no RST) are let go within a bounded time.

The clients live in their own network namespace (``netns.Island``); taking its end of the link
down makes them vanish for real. The relay finds them by a heartbeat that is never
acknowledged (``TCP_USER_TIMEOUT``) or, for idle keep-alive connections, by TCP keepalive
(``relay/node/listener.py``), and releases stream, subscription, task and file descriptor.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import select
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay.harness.servers import Relay, metrics, publish
from relay.protocol.ids import parse
from tests.integration.conftest import TOKEN
from tests.integration.netns import Island
from tests.integration.sse import collect, subscribe

_SYS_PIDFD_GETFD = 438  # x86-64 and arm64 alike


def _socket_of(pid: int, peer: tuple[str, int]) -> socket.socket | None:
    """A duplicate of the socket in process ``pid`` whose peer is ``peer`` (pidfd_getfd)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                continue
            sock = socket.socket(fileno=fd)
            with_peer = None
            try:
                if sock.type == socket.SOCK_STREAM and sock.getpeername() == peer:
                    with_peer = sock
            except OSError:
                pass
            if with_peer is not None:
                return with_peer
            sock.close()
    finally:
        os.close(pidfd)
    return None


def test_accepted_sockets_carry_the_tcp_options(start_relay: Callable[..., Relay]) -> None:
    """The options reach the sockets Granian's workers accept (fails if a Granian upgrade
    bypasses ``listener.Server``)."""
    relay = start_relay(tcp_keepalive_s=7, tcp_user_timeout_s=2.5,
                        tcp_send_buffer_bytes=96 * 1024)
    with socket.create_connection(("127.0.0.1", relay.port)) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 200")
        found = [s for pid in relay.worker_pids()
                 if (s := _socket_of(pid, conn.getsockname())) is not None]
        assert len(found) == 1, "the worker's end of the connection"
        with found[0] as accepted:
            tcp = socket.IPPROTO_TCP
            assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert accepted.getsockopt(tcp, socket.TCP_KEEPIDLE) == 7
            assert accepted.getsockopt(tcp, socket.TCP_KEEPINTVL) == 2
            assert accepted.getsockopt(tcp, socket.TCP_KEEPCNT) == 3
            assert accepted.getsockopt(tcp, socket.TCP_USER_TIMEOUT) == 2500
            assert accepted.getsockopt(tcp, socket.TCP_NODELAY) == 1  # as Granian sets it
            assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 96 * 1024


def _sockets_to(addr: str) -> int:
    """TCP sockets of this (host) namespace whose peer is ``addr``."""
    out = subprocess.run(["ss", "-Htn", "state", "all", "dst", addr], capture_output=True,
                         check=True, timeout=10).stdout.decode()
    return len([line for line in out.splitlines() if line.strip()])


def _fds(pids: list[int]) -> int:
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids)


HEARTBEAT_S = 1.0
USER_TIMEOUT_S = 3.0
KEEPALIVE_S = 2
STREAMS = 20
IDLE = 5


@pytest.fixture
def island() -> Iterator[Island]:
    try:
        with Island.open() as island:
            yield island
    except RuntimeError as exc:
        if "network namespace" not in str(exc):
            raise
        pytest.skip(str(exc))


def test_vanished_clients_are_released_within_heartbeat_plus_user_timeout(
    start_relay: Callable[..., Relay], tmp_path: Path, island: Island,
) -> None:
    _vanish(start_relay, tmp_path, island)


def _vanish(start_relay: Callable[..., Relay], tmp_path: Path, island: Island) -> None:
    relay = start_relay(host=island.host_addr, heartbeat_s=HEARTBEAT_S, topic_linger_s=0,
                        tcp_user_timeout_s=USER_TIMEOUT_S, tcp_keepalive_s=KEEPALIVE_S)
    workers = relay.worker_pids()

    async def run() -> dict[str, float]:
        url = f"{relay.url}/v1/streams/dead/events"
        alive = await subscribe(url)  # a healthy client on the host side
        before = await metrics(relay.url)
        fds_before = _fds(workers)
        client = island.spawn(["-m", "tests.integration.vanishing_client", island.host_addr,
                               str(relay.port), "dead", str(STREAMS), str(IDLE)],
                              tmp_path / "vanishing-client.log")
        assert client.stdout is not None
        ready, _, _ = select.select([client.stdout], [], [], 30)
        assert ready and client.stdout.readline().startswith(b"ready"), "clients connected"
        during = await metrics(relay.url)
        assert during["ssedge_streams_open"] == STREAMS + 1
        assert _sockets_to(island.addr) == STREAMS + IDLE
        published = await publish(relay.url, TOKEN, "dead", [{"data": i} for i in range(5)])

        island.cut()
        cut = time.monotonic()
        released: dict[str, float] = {}
        while time.monotonic() - cut < 30 and len(released) < 3:
            m = await metrics(relay.url)
            now = time.monotonic() - cut
            if (m["ssedge_streams_open"] == 1 and m["ssedge_subscribers"] == 1
                    and m["ssedge_tasks"] <= before["ssedge_tasks"]):
                released.setdefault("streams", now)
            if _sockets_to(island.addr) == 0:
                released.setdefault("sockets", now)
            if _fds(workers) <= fds_before:
                released.setdefault("fds", now)
            await asyncio.sleep(0.1)
        # nothing was published while they vanished: the heartbeat alone found them
        published += await publish(relay.url, TOKEN, "dead", [{"data": i} for i in range(5)])
        got = await collect(alive, len(published), timeout=10)
        ids = [e.id for e in got]
        assert ids == published and len(set(ids)) == len(ids), "the live client lost nothing"
        assert ids == sorted(ids, key=parse)
        alive.close()
        return released

    released = asyncio.run(run())
    print(f"released after the link went down: {released}")
    bound = HEARTBEAT_S + USER_TIMEOUT_S + 2  # one sweep, and time to notice, in the slack
    assert set(released) == {"streams", "sockets", "fds"}, released
    assert released["streams"] <= bound
    assert max(released.values()) <= bound
