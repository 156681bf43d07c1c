"""A checkout where `make up` ran holds ``.ssedge/env`` (the local stack's admin token, JWT
secret, ...), which ``ssedge`` commands read from their working directory. The relays the
tests and benchmarks start must not: they run in their own directory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from relay.harness.servers import RedisServer, Relay
from relay.web import client
from tests.integration.conftest import TOKEN


def test_a_relay_started_from_a_checkout_with_a_stack_env_ignores_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer) -> None:
    (tmp_path / ".ssedge").mkdir()
    (tmp_path / ".ssedge" / "env").write_text("SSEDGE_ADMIN_TOKEN=the-stack-s-own\n")
    monkeypatch.chdir(tmp_path)  # as `make test` after `make up` in the same checkout
    logs = tmp_path / "logs"
    logs.mkdir()
    relay = Relay(logs, redis_server, TOKEN)
    try:
        response = asyncio.run(client.request(
            "GET", f"{relay.url}/v1/admin/audience",
            headers={"authorization": "Bearer the-stack-s-own"}))
        assert response.status == 404, response.body  # the operator API is off: no token
    finally:
        relay.stop()
