"""`.ssedge/env` (the running stack's settings) reaches every ssedge command but `ssedge up`,
which writes it anew for the stack it starts; a Redis named in the real environment is kept
whole."""

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

    def run(*_: object, **__: object) -> int:
        seen["cluster"] = os.environ.get("SSEDGE_REDIS_CLUSTER")
        return 0

    monkeypatch.setattr(stack, "run", run)
    assert cli.main(["up"]) == 0
    assert seen == {"cluster": None}  # `make up` after `make up-cluster` runs on one Redis
    assert cli.main(["settings"]) == 0
    assert os.environ.get("SSEDGE_REDIS_CLUSTER") == "127.0.0.1:7001"  # others read it


def test_a_redis_named_in_the_environment_is_not_joined_by_the_stacks_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "env").write_text("SSEDGE_REDIS_CLUSTER=127.0.0.1:7001\n"
                                  "SSEDGE_PUBLISH_TOKEN=from-the-stack\n")
    monkeypatch.setattr(os, "environ", {"SSEDGE_REDIS_URL": "redis://127.0.0.1:6999/0"})
    cli.read_stack_env(tmp_path)
    # a relay a test starts on its own Redis stays on it, after `make up-cluster` in the checkout
    assert os.environ == {"SSEDGE_REDIS_URL": "redis://127.0.0.1:6999/0",
                          "SSEDGE_PUBLISH_TOKEN": "from-the-stack"}
