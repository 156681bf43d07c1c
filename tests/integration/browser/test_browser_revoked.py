"""A revoked token in headless Chromium through the edge: the page's EventSources read with it
are told (``ssedge.revoked``, the operator's reason) and end up CLOSED for good (readyState 2:
their reconnect got the 403), while an EventSource of another token goes on reading.

Real HAProxy and varnishd in front of two relays, the replay service and Redis; the
revocation is ordered on one relay's operator API, and the streams are on both."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from playwright.sync_api import Browser

from relay.harness.servers import Relay, Varnish, publish
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.web.test_pages import _run

TOPIC = "private-revoked"
SECRET = "browser-revoked-secret-" + "x" * 30
ADMIN = "browser-admin-token"
WAIT_MS = 15_000

# Three EventSources: two with the token to revoke (the edge spreads them over the relays),
# one with another token. Each records its events, the revocation notice and every change of
# readyState (polled: EventSource has no event for CLOSED after a refused reconnect).
PAGE = """
async ({topic, revoked, kept}) => {
  const t0 = performance.now();
  const now = () => performance.now() - t0;
  const log = window.log = {sources: []};
  for (const token of [revoked, revoked, kept]) {
    const es = new EventSource(`/v1/streams/${topic}/events?access_token=${token}`);
    const mine = {data: [], revoked: [], states: [[0, es.readyState]], opens: 0, errors: 0};
    log.sources.push(mine);
    es.onopen = () => { mine.opens += 1; };
    es.onerror = () => { mine.errors += 1; };
    es.onmessage = (e) => { mine.data.push(e.data); };
    es.addEventListener('ssedge.revoked', (e) => {
      mine.revoked.push({t: now(), ...JSON.parse(e.data)});
    });
    setInterval(() => {
      const last = mine.states[mine.states.length - 1][1];
      if (es.readyState !== last) mine.states.push([now(), es.readyState]);
    }, 10);
  }
}
"""


def reader_token(jti: str, sub: str) -> str:
    return jwt.encode({"ssedge": {"subscribe": ["private-*"]}, "exp": int(time.time() + 600),
                       "jti": jti, "sub": sub}, SECRET, algorithm="HS256")


@pytest.fixture
def deployment(start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
               start_varnish: Callable[..., Varnish]) -> tuple[list[Relay], Varnish]:
    # started before the browser: Playwright's sync API runs an event loop on this thread
    auth: dict[str, Any] = {"private_topics": "private-*", "jwt_secret": SECRET,
                            "jwt_leeway_s": 0}
    relays = [start_relay(admin_token=ADMIN, retry_ms=1000, heartbeat_s=1, **auth)
              for _ in range(2)]
    return relays, start_varnish(relays, start_replay(**auth))


def test_a_revoked_token_closes_its_eventsources_for_good_and_tells_the_page(
        deployment: tuple[list[Relay], Varnish], browser: Browser) -> None:
    relays, edge = deployment
    revoked, kept = reader_token("jti-browser", "viewer-1"), reader_token("jti-other", "viewer-2")

    page = browser.new_page()
    page.goto(f"{edge.url}/healthz")  # any page of the edge's origin
    page.evaluate(PAGE, {"topic": TOPIC, "revoked": revoked, "kept": kept})
    page.wait_for_function("() => log.sources.every(s => s.opens === 1)", timeout=WAIT_MS)
    _run(publish(relays[0].url, TOKEN, TOPIC, [{"data": "before"}]))
    page.wait_for_function("() => log.sources.every(s => s.data.includes('before'))",
                           timeout=WAIT_MS)

    answer = _run(client.request(
        "POST", f"{relays[1].url}/v1/admin/revocations",
        headers={"Authorization": f"Bearer {ADMIN}"},
        json_body={"jti": "jti-browser", "until": time.time() + 300,
                   "reason": "signed out everywhere"}))
    assert answer.status == 201, answer.body
    # told, then closed for good once the reconnect was refused (403)
    page.wait_for_function("() => log.sources.slice(0, 2).every(s => s.revoked.length === 1 "
                           "&& s.states[s.states.length - 1][1] === 2)", timeout=WAIT_MS)
    _run(publish(relays[0].url, TOKEN, TOPIC, [{"data": "after"}]))
    page.wait_for_function("() => log.sources[2].data.includes('after')", timeout=WAIT_MS)
    page.wait_for_timeout(1500)  # a closed EventSource must stay closed
    log = page.evaluate("log")
    page.close()

    for source in log["sources"][:2]:
        assert source["revoked"][0]["reason"] == "signed out everywhere"
        assert source["revoked"][0]["jti"] == "jti-browser"
        assert source["data"] == ["before"]  # nothing after the revocation
        assert source["opens"] == 1 and source["states"][-1][1] == 2
    other = log["sources"][2]
    assert other["data"] == ["before", "after"] and other["revoked"] == []
    assert all(state != 2 for _, state in other["states"])
    print("\nrevoked EventSources' states (ms, readyState): "
          + json.dumps([s["states"] for s in log["sources"][:2]]))

    # what their reconnect got, through the edge: a 403 naming the revocation
    async def refused() -> client.Response:
        es = await client.stream(f"{edge.url}/v1/streams/{TOPIC}/events?access_token={revoked}")
        es.close()
        return es.response

    response = _run(refused())
    assert response.status == 403
    assert json.loads(response.body)["revocation"]["jti"] == "jti-browser"
