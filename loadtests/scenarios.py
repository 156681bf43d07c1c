"""The scenarios ``ssedge load`` runs: which Locust user classes, and their default knobs.

The table is ``scenarios.toml``; this reads it for Locust, and ``relay/cli/load.py`` reads the
same file for the command line without importing this package.
The user classes live in ``loadtests/locustfile.py``; each scenario runs its readers plus one
publisher (``fixed_count = 1``). Each class's tasks are tagged with the scenarios it is in
(``tags_of``), and ``loadtests/<scenario>.conf`` selects one by its tag, so plain
``locust -f loadtests/locustfile.py --config loadtests/fanout.conf`` runs that scenario.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    user_classes: tuple[str, ...]
    #: Locust custom options (``--ssedge-*``) this scenario sets unless the caller does.
    options: dict[str, str] = field(default_factory=dict)


TABLE = Path(__file__).with_name("scenarios.toml")


def load(path: Path = TABLE) -> dict[str, Scenario]:
    """The scenario table (plain data, read the same way by ``ssedge load``)."""
    with open(path, "rb") as f:
        table = tomllib.load(f)
    return {name: Scenario(name, row["summary"], tuple(row["user_classes"]),
                           dict(row.get("options", {}))) for name, row in table.items()}


SCENARIOS: dict[str, Scenario] = load()


def tags_of(user_class: str) -> tuple[str, ...]:
    """The scenarios a user class is in: the tags of its tasks."""
    return tuple(s.name for s in SCENARIOS.values() if user_class in s.user_classes)
