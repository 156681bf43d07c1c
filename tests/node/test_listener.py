"""relay/node/listener.py: the options set on the listener are the ones accepted sockets have."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from relay.node.listener import TcpOptions, bound_socket

TCP = socket.IPPROTO_TCP


def _accepted(options: TcpOptions) -> tuple[socket.socket, socket.socket, socket.socket]:
    listener = bound_socket("127.0.0.1", 0, options)
    listener.listen(16)
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    return listener, client, accepted


def test_linux_copies_keepalive_and_user_timeout_to_accepted_sockets() -> None:
    listener, client, accepted = _accepted(TcpOptions(keepalive_s=9, user_timeout_s=4.5,
                                                      send_buffer_bytes=64 * 1024))
    with listener, client, accepted:
        assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert accepted.getsockopt(TCP, socket.TCP_KEEPIDLE) == 9
        assert accepted.getsockopt(TCP, socket.TCP_KEEPINTVL) == 3
        assert accepted.getsockopt(TCP, socket.TCP_KEEPCNT) == 3
        assert accepted.getsockopt(TCP, socket.TCP_USER_TIMEOUT) == 4500
        assert accepted.getsockopt(TCP, socket.TCP_NODELAY) == 1
        # Linux doubles SO_SNDBUF for its bookkeeping, and locks it (no autotuning)
        assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 128 * 1024
        # the connecting side is untouched: these are the server's choices
        assert client.getsockopt(TCP, socket.TCP_USER_TIMEOUT) == 0


def test_zero_turns_them_off() -> None:
    listener, client, accepted = _accepted(TcpOptions(keepalive_s=0, user_timeout_s=0))
    with listener, client, accepted:
        assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        assert accepted.getsockopt(TCP, socket.TCP_USER_TIMEOUT) == 0
        wmem_default = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[1])
        assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= wmem_default


@pytest.mark.parametrize(("keepalive", "interval"), [(1, 1), (2, 1), (60, 20), (100, 33)])
def test_probe_interval_is_a_third_of_the_idle_time(keepalive: int, interval: int) -> None:
    assert TcpOptions(keepalive, 0).keepalive_interval_s == interval


def test_two_relays_may_share_a_port_as_with_granian() -> None:
    # SO_REUSEPORT, as Granian sets it on its own listeners: nothing changes there
    first = bound_socket("127.0.0.1", 0, TcpOptions(0, 0))
    with first, bound_socket("127.0.0.1", first.getsockname()[1], TcpOptions(0, 0)) as second:
        first.listen(16)
        second.listen(16)


def test_a_bound_socket_refuses_connections_until_a_worker_listens() -> None:
    with bound_socket("127.0.0.1", 0, TcpOptions(0, 0)) as sock, socket.socket() as client:
        assert client.connect_ex(sock.getsockname()) != 0
