"""The listening socket, made here so that every accepted connection has TCP keepalive, a TCP
user timeout and a bounded send buffer: a client that vanished from the network, or never
reads, is let go in bounded time and costs bounded memory.

A peer that disappears without FIN or RST (power cut, NAT entry dropped, cable pulled) leaves
an established socket that nothing closes: an idle one forever, one with unacknowledged data
only after ``tcp_retries2`` (about 15 minutes), holding its stream, task and subscription
all that time. Two kernel options bound it:

- ``TCP_USER_TIMEOUT``: data unacknowledged for this long aborts the connection. Every stream
  writes a heartbeat each ``heartbeat_s``, so a vanished stream client is dropped within
  ``heartbeat_s + tcp_user_timeout_s``.
- ``SO_KEEPALIVE`` with ``TCP_KEEPIDLE``/``TCP_KEEPINTVL``/``TCP_KEEPCNT``: an idle connection
  (a keep-alive HTTP connection between requests) is probed after ``tcp_keepalive_s``.

The user timeout also ends a connection whose peer keeps its receive window shut that long
(Linux counts unanswered zero-window time against it since 5.11; checked on 6.18 by
``tests/integration/node/test_stuck_clients.py``): a client that never reads, whose stream the
sweeper already ended, does not hold its buffers forever. ``SO_SNDBUF``
(``tcp_send_buffer_bytes``) bounds what the kernel holds for each such connection; left to
autotuning it grows to ``net.ipv4.tcp_wmem``'s maximum (4 MiB), and a thousand stuck clients
would take gigabytes of the kernel's TCP memory, which every other connection shares.

Linux copies these options from a listening socket to every socket it accepts (checked by
``tests/test_listener.py``), so they are set once, here.

Granian has no option for them and, on Linux, builds one ``SO_REUSEPORT`` listener per worker
inside its Rust code. ``Server`` replaces that step (``_init_shared_socket``, the hook Granian
itself uses on platforms without per-worker listeners) with a socket built here with
Granian's own options (``SO_REUSEADDR``, ``SO_REUSEPORT``, ``TCP_NODELAY``) plus ours, handed
to the workers as a ``SocketHolder`` (so a node's workers share one accept queue instead of
the kernel hashing connections over one queue each). It leans on Granian internals pinned in
pyproject.toml; ``test_accepted_sockets_carry_the_tcp_options`` (in
``tests/integration/node/test_dead_clients.py``) reads the options back from a connection a real
relay accepted, so an upgrade that bypasses the hook fails there.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from dataclasses import dataclass
from typing import Any

from granian.server import MPServer

KEEPALIVE_PROBES = 3


@dataclass(frozen=True, slots=True)
class TcpOptions:
    keepalive_s: int  # 0: keepalive off
    user_timeout_s: float  # 0: the kernel's retransmission limit
    send_buffer_bytes: int = 0  # 0: the kernel's autotuning (up to net.ipv4.tcp_wmem's max)

    @property
    def keepalive_interval_s(self) -> int:
        return max(1, self.keepalive_s // KEEPALIVE_PROBES)


def apply(sock: socket.socket, options: TcpOptions) -> None:
    """Set keepalive and user timeout on ``sock`` (a listener: accepted sockets inherit them)."""
    if options.keepalive_s:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, options.keepalive_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, options.keepalive_interval_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
    if options.user_timeout_s:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                        max(1, round(options.user_timeout_s * 1000)))
    if options.send_buffer_bytes:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, options.send_buffer_bytes)


def bound_socket(host: str, port: int, options: TcpOptions) -> socket.socket:
    """A bound TCP socket as Granian would make it, plus ``options``; not listening yet."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited: SSE latency
        apply(sock, options)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class Server(MPServer):
    """Granian (worker processes, what ``granian.Granian`` is on CPython with the GIL),
    serving on a listener built by ``bound_socket``."""

    def __init__(self, *args: Any, tcp: TcpOptions, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tcp = tcp

    def _init_shared_socket(self) -> None:
        if self.bind_uds or not sys.platform.startswith("linux"):
            super()._init_shared_socket()  # type: ignore[no-untyped-call]
            return
        from granian._granian import SocketHolder

        sock = bound_socket(self.bind_addr, self.bind_port, self.tcp)
        # what Granian does where workers share one listener: the holder goes to each worker
        # (fork keeps the fd number), the inheritable socket object keeps it open here.
        # Granian's Linux SocketHolder takes (fd, is_uds, backlog) (its stub lacks them) and
        # calls listen() in each worker once the app has started: until then the port refuses
        # connections, as it does with Granian's own listeners (a probe never queues behind a
        # worker that is still starting). Granian declares these attributes as None.
        holder = SocketHolder(sock.fileno(), False, self.backlog)  # type: ignore[call-arg]
        self._ssp = None
        self._shd = holder  # type: ignore[assignment]
        self._sfd = sock.fileno()  # type: ignore[assignment]
        sock.set_inheritable(True)
        self._sso = sock
