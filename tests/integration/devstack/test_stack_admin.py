"""The local stack's operators' commands just work in its checkout: ``ssedge up`` writes the
admin token and a relay's URL to ``.ssedge/env``, and ``ssedge top``, ``revoke`` and
``disconnect`` find them there."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from tests.integration.sse import subscribe
from tests.integration.upstack import SSEDGE, UpStack, clean_env


def test_ssedge_top_revoke_and_disconnect_against_make_up(tmp_path: Path) -> None:
    stack = UpStack(tmp_path / ".ssedge")

    def ssedge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*SSEDGE, *args], cwd=tmp_path, env=clean_env(),
                              capture_output=True, text=True, timeout=30)

    try:
        stack.wait_up()
        env = (tmp_path / ".ssedge" / "env").read_text()
        assert "SSEDGE_ADMIN_TOKEN=" in env and "SSEDGE_ADMIN_URL=" in env

        async def watch() -> None:
            readers = [await subscribe(f"{stack.edge}/v1/streams/stack.top/events")
                       for _ in range(3)]
            try:
                for _ in range(50):  # the relays report every 2 s
                    done = ssedge("top", "--once", "--json", "--limit", "100")
                    assert done.returncode == 0, done.stderr
                    rows = {r["topic"]: r["audience"] for r in json.loads(done.stdout)["topics"]}
                    if rows.get("stack.top") == 3:
                        break
                    await asyncio.sleep(0.3)
                else:
                    raise AssertionError(done.stdout)
            finally:
                for es in readers:
                    es.close()

        asyncio.run(watch())
        done = ssedge("disconnect", "--topic", "stack.top")
        assert done.returncode == 0, done.stderr
        done = ssedge("revoke", "--sub", "nobody", "--for", "1m")
        assert done.returncode == 0, done.stderr
        assert '"sub": "nobody"' in ssedge("revoke", "--list").stdout
    finally:
        assert stack.stop() == 0
