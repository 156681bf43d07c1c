"""Screenshots of the live feed and the dashboard, from a running stack (``make up``).

Applies a little load first (readers through the edge, a publisher, handshake, metadata and
replay requests) so the dashboard's plots have something to show, then takes both pages with
Debian's chromium through Playwright: ``make screenshots`` (docs/img/demo.png and
docs/img/dashboard.png).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from relay.web import client

CHROMIUM = "/usr/bin/chromium"


async def load(url: str, token: str, seconds: float, readers: int) -> None:
    streams = [await client.stream(f"{url}/v1/streams/screenshot-load/events")
               for _ in range(readers)]

    async def drain(es: client.EventStream) -> None:
        with contextlib.suppress(Exception):
            async for _ in es:
                pass

    drains = [asyncio.ensure_future(drain(es)) for es in streams]
    auth = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + seconds
    n = 0
    first_page = ""  # a closed range, as a reconnect storm asks for it: cached at the edge
    try:
        while time.monotonic() < deadline:
            # a rate that rises and falls, so the plots are not flat lines
            batch = 5 + int(15 * abs(((time.monotonic() % 40) - 20) / 20))
            answer = await client.request(
                "POST", f"{url}/v1/streams/screenshot-load/events", headers=auth,
                json_body=[{"data": {"n": n + i}, "event": "load"} for i in range(batch)])
            n += batch
            if answer.status == 201 and not first_page:
                first_page = answer.json()["ids"][-1]
            await client.request("GET", f"{url}/v1/handshake")
            await client.request("GET", f"{url}/v1/streams/demo")
            await client.request(
                "GET", f"{url}/v1/replay/screenshot-load?after=0-0&until={first_page}")
            await asyncio.sleep(0.1)
    finally:
        for task in drains:
            task.cancel()
        for es in streams:
            es.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the stack's edge")
    parser.add_argument("--token-file", default=".ssedge/publish-token")
    parser.add_argument("--out", default="docs/img")
    parser.add_argument("--seconds", type=float, default=70, help="load before the shots")
    parser.add_argument("--readers", type=int, default=150)
    args = parser.parse_args()
    token = Path(args.token_file).read_text().strip()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{args.url}/?topic=demo")
        dashboard = browser.new_page(viewport={"width": 1280, "height": 900})
        dashboard.goto(f"{args.url}/dashboard")
        # the load runs in its own thread: Playwright's loop owns this one
        worker = threading.Thread(target=lambda: asyncio.run(
            load(args.url, token, args.seconds, args.readers)))
        worker.start()
        page.fill("#token", token)
        page.fill("#event-type", "note")
        page.fill("#data", "hello from the demo page")
        page.click("#publish button")
        # taken while the load still runs: the numbers are the loaded ones
        dashboard.wait_for_timeout(max(0.0, args.seconds - 5) * 1000)
        dashboard.screenshot(path=str(out / "dashboard.png"), full_page=True)
        page.screenshot(path=str(out / "demo.png"), full_page=True)
        worker.join()
        browser.close()
    print(f"wrote {out / 'demo.png'} and {out / 'dashboard.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
