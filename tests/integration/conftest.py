from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.servers import RedisServer, Relay, Varnish

TOKEN = "test-token"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def start_relay(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[..., Relay]]:
    started: list[Relay] = []

    def start(**settings: Any) -> Relay:
        relay = Relay(tmp_path, redis_server, TOKEN, **settings)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()


@pytest.fixture
def start_replay(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[..., Relay]]:
    started: list[Relay] = []

    def start(**settings: Any) -> Relay:
        replay = Relay(tmp_path, redis_server, TOKEN, command="replay", **settings)
        started.append(replay)
        return replay

    yield start
    for replay in started:
        replay.stop()


@pytest.fixture
def relay(start_relay: Callable[..., Relay]) -> Relay:
    return start_relay(heartbeat_s=0.5, topic_linger_s=0)


@pytest.fixture
def start_varnish(tmp_path: Path) -> Iterator[Callable[..., Varnish]]:
    started: list[Varnish] = []

    def start(relays: list[Relay], replay: Relay | None, *params: str) -> Varnish:
        varnish = Varnish(tmp_path / f"varnish-{len(started)}", relays, replay, params)
        started.append(varnish)
        return varnish

    yield start
    for varnish in started:
        varnish.stop()
