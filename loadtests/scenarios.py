"""The scenarios ``ssedge load`` runs: which Locust user classes, and their default knobs.

Plain data, importable without Locust (it monkey-patches the process it is imported in).
The user classes live in ``loadtests/locustfile.py``; each scenario runs its readers plus one
publisher (``fixed_count = 1``). Each class's tasks are tagged with the scenarios it is in
(``tags_of``), and ``loadtests/<scenario>.conf`` selects one by its tag, so plain
``locust -f loadtests/locustfile.py --config loadtests/fanout.conf`` runs that scenario.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    user_classes: tuple[str, ...]
    #: Locust custom options (``--ssedge-*``) this scenario sets unless the caller does.
    options: dict[str, str] = field(default_factory=dict)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("fanout", "many readers on one topic, steady publish rate",
             ("FanoutReader", "SteadyPublisher"), {"rate": "10"}),
    Scenario("many-topics", "readers spread over many topics, each published to steadily",
             ("TopicsReader", "SteadyPublisher"), {"rate": "2", "topics": "20"}),
    Scenario("reconnect-storm",
             "most readers drop at once, every few seconds, and resume with Last-Event-ID",
             ("StormReader", "SteadyPublisher"), {"rate": "20", "storm-every": "15",
                                                  "storm-share": "0.9"}),
    Scenario("slow-consumer", "slow readers next to fast ones; the fast ones keep their latency",
             ("FastReader", "SlowReader", "SteadyPublisher"), {"rate": "50", "payload": "1024"}),
    Scenario("publish-burst", "bursts of events in batches, readers must get every one",
             ("BurstReader", "BurstPublisher"), {"burst-size": "500", "burst-every": "5"}),
    Scenario("edge-cache", "handshake and metadata requests; Varnish's hit ratio from X-Cache",
             ("EdgeClient",), {"topics": "10"}),
    Scenario("churn", "readers that come and go: some resume with Last-Event-ID, some are new",
             ("ChurnReader", "SteadyPublisher"), {"rate": "10", "churn-life": "5"}),
    Scenario("private-topic", "readers of a private topic with subscriber tokens (JWT)",
             ("PrivateReader", "SteadyPublisher"), {"rate": "10"}),
)}


def tags_of(user_class: str) -> tuple[str, ...]:
    """The scenarios a user class is in: the tags of its tasks."""
    return tuple(s.name for s in SCENARIOS.values() if user_class in s.user_classes)
