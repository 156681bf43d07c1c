from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _no_stack_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set every setting they use; none leaks in from a developer's shell."""
    for name in list(os.environ):
        if name.startswith("SSEDGE_"):
            monkeypatch.delenv(name)
