"""The edge as ``ssedge up`` (``make up``) runs it on the open internet's terms: its dashboard
page works by the address the banner prints (the stats topic is private: the address carries a
token), the stats topic is refused without one, a client on 127.0.0.2 meets the per-client
limits while the stack's own clients on 127.0.0.1 are exempt, and HAProxy's JSON access log
is in the stack's edge.log."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from relay.drill.hostile import HOSTILE, request
from tests.integration.upstack import UpStack

WAIT_MS = 20_000


@pytest.fixture
def up(tmp_path: Path) -> Iterator[UpStack]:
    stack = UpStack(tmp_path / "state")
    try:
        stack.wait_up()
        yield stack
    finally:
        stack.stop()


def test_make_up_dashboard_private_stats_and_limits(up: UpStack, browser: Browser) -> None:
    port = int(up.edge.rsplit(":", 1)[1])
    found = re.search(r"dashboard\s+(http://\S+/dashboard\?access_token=\S+)", up.log())
    assert found, up.log()
    page = browser.new_page()
    try:
        page.goto(found.group(1))
        # the page's stream on ssedge.stats opened with the token, and snapshots arrive
        page.wait_for_selector('#state[data-state="open"]', timeout=WAIT_MS)
        page.wait_for_function("() => window.ssedgeDashboard.snapshots.length > 1",
                               timeout=WAIT_MS)
    finally:
        page.close()

    async def probe() -> tuple[int, int, dict[str, dict[int, int]]]:
        bare = await request(port, "/v1/streams/ssedge.stats/events", source="127.0.0.1")
        odd = await request(port, "/v1/streams/demo/events/", source="127.0.0.1")
        counts: dict[str, dict[int, int]] = {HOSTILE: {}, "127.0.0.1": {}}
        for source, seen in counts.items():
            for i in range(1100):  # over the default 1,000 requests per 10 s
                answer = await request(port, f"/v1/streams/demo{i % 7}", source=source)
                seen[answer.status] = seen.get(answer.status, 0) + 1
        return bare.status, odd.status, counts

    # Playwright's sync API holds this thread's event loop: the probe runs on another
    with ThreadPoolExecutor(1) as pool:
        bare, odd, counts = pool.submit(asyncio.run, probe()).result()
    hostile, local = counts[HOSTILE], counts["127.0.0.1"]
    assert bare == 401 and odd == 400
    assert hostile.get(429, 0) > 0, hostile  # 127.0.0.2 meets the limits
    assert local == {200: 1100}, local  # 127.0.0.1 (the stack's demo, tools) is exempt
    log = (up.directory / "edge.log").read_text(errors="replace")
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(e["client"] == HOSTILE and e["status"] == 429 for e in lines)
    assert any(e["refused"] == "spelling" for e in lines)
