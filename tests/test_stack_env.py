"""`.ssedge/env` (the running stack's settings) reaches every ssedge command but `ssedge up`,
which writes it anew for the stack it starts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from relay import cli, stack


def test_up_does_not_inherit_the_previous_stacks_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / ".ssedge").mkdir()
    (tmp_path / ".ssedge" / "env").write_text("SSEDGE_REDIS_CLUSTER=127.0.0.1:7001\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items()
                                        if not k.startswith("SSEDGE_")})
    seen: dict[str, Any] = {}

    def run(*_: object) -> int:
        seen["cluster"] = os.environ.get("SSEDGE_REDIS_CLUSTER")
        return 0

    monkeypatch.setattr(stack, "run", run)
    assert cli.main(["up"]) == 0
    assert seen == {"cluster": None}  # `make up` after `make up-cluster` runs on one Redis
    assert cli.main(["settings"]) == 0
    assert os.environ.get("SSEDGE_REDIS_CLUSTER") == "127.0.0.1:7001"  # others read it
