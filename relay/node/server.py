"""Run relay nodes on Granian."""

from __future__ import annotations

import math
import os
import secrets

from granian.constants import HTTPModes, Interfaces, Loops
from granian.http import HTTP1Settings
from granian.log import LogLevels

from relay import logs, scrape
from relay.node.listener import Server, TcpOptions
from relay.settings import Settings, file_variables, to_environ


def run(settings: Settings, target: str = "relay.node.app:create_app", *, host: str | None = None,
        port: int | None = None) -> None:
    """Serve ``target`` (an ASGI app factory) in the foreground until SIGINT or SIGTERM."""
    # workers are processes that build their settings from the environment again: from the
    # values read here, not from the files again (a secret's *_FILE beside its value would be
    # refused as set twice)
    os.environ.update(to_environ(settings))
    for name in file_variables():
        os.environ.pop(name, None)
    # the name under which the workers find each other for one /metrics of them all
    # (relay.scrape): this server's alone
    os.environ[scrape.NAME_ENV] = f"ssedge-{os.getpid()}-{secrets.token_hex(6)}"
    os.environ[scrape.COUNT_ENV] = str(settings.workers)
    _serve(settings, target, host, port)


def _serve(settings: Settings, target: str, host: str | None, port: int | None) -> None:
    Server(
        target,
        address=host or settings.host,
        port=port or settings.port,
        interface=Interfaces.ASGI,  # ASGI send() has backpressure; RSGI streams do not
        workers=settings.workers,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        # Granian's default admits backlog/workers (1024) connections per worker: every
        # stream beyond that would wait in the kernel backlog
        backpressure=settings.max_connections,
        backlog=min(65535, max(1024, settings.max_connections)),
        # 8 KiB read buffers: idle streams hold 18 KiB instead of 26
        http1_settings=HTTP1Settings(max_buffer_size=8192, keep_alive=True),
        factory=True,
        # Granian's access log would write query strings, tokens among them: ssedge writes
        # its own (SSEDGE_ACCESS_LOG, relay.web.http), with paths only
        log_access=False,
        log_level=LogLevels(settings.log_level),
        log_dictconfig=logs.granian_config(settings.log_format),
        # a stopping relay drains its streams first (relay.app._take_stop_signals)
        workers_kill_timeout=math.ceil(settings.drain_s) + 5,
        # a worker that dies (a crash, the OOM killer) is forked again from the main process
        # on the same listener instead of ending the node; its clients reconnect with their
        # Last-Event-ID (docs/RELIABILITY.md has what it costs them). Granian gives up, and
        # the node exits 1, when a respawned worker dies again within 5.5 s: then whatever
        # supervises the node (ssedge up, systemd) restarts it whole.
        respawn_failed_workers=True,
        # keepalive, user timeout and send buffer on the listener: vanished and stuck clients
        # are let go in bounded time and cost bounded memory (relay.listener)
        tcp=TcpOptions(settings.tcp_keepalive_s, settings.tcp_user_timeout_s,
                       settings.tcp_send_buffer_bytes),
    ).serve()
