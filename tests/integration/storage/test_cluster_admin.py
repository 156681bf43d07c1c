"""The operator API on a real Redis Cluster (3 primaries, 3 replicas) and three relays: the
audience of topics spread over every primary is exact on every relay, and a revocation and a
disconnect reach every relay (the Pub/Sub channel is the cluster's, its keys one slot:
``{#audience}``, ``{#control}``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest

from relay.harness.servers import Relay
from tests.integration.web.test_admin import (
    SETTINGS,
    audience,
    call,
    closing,
    open_reader,
    reader_token,
    settled,
    stream_url,
    wait_for,
)


@pytest.fixture
def relays(cluster_relays: Callable[..., list[Relay]]) -> list[Relay]:
    return cluster_relays(3, **SETTINGS)


def test_audience_revocation_and_disconnect_on_a_cluster(relays: list[Relay]) -> None:
    r1, r2, r3 = relays
    topics = [f"cl.{i}" for i in range(6)]  # over the three primaries

    async def run() -> None:
        expected: dict[str, int] = {}
        for i, topic in enumerate(topics):
            for relay in relays[: 1 + i % 3]:
                await open_reader(stream_url(relay, topic))
                expected[topic] = expected.get(topic, 0) + 1
        token = reader_token("cl-jti", "cl-sub")
        revoked = [await open_reader(stream_url(r, "private-cl"), token) for r in relays]
        expected["private-cl"] = 3
        await settled(relays, expected)

        ordered = time.monotonic()
        response = await call("POST", f"{r2.url}/v1/admin/revocations",
                              {"jti": "cl-jti", "until": time.time() + 60, "reason": "cl"})
        assert response.status == 201, response.body
        for reader in revoked:
            await wait_for(lambda r=reader: r.ended_at is not None, 1.5, "revoked streams")
            assert reader.ended_at is not None and reader.ended_at - ordered < 1.0
            assert json.loads(reader.events[-1].data)["reason"] == "cl"

        response = await call("POST", f"{r3.url}/v1/admin/disconnect", {"topic": "cl.2"})
        assert response.status == 202
        del expected["private-cl"], expected["cl.2"]
        await settled(relays, expected)
        assert (await audience(r1))["cl.5"] == 3

    asyncio.run(closing(run()))
