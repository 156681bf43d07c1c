"""ssedge's Locust scenarios: readers, publishers, and the run's verdict.

Headless, one scenario: ``ssedge load SCENARIO`` (see ``loadtests/scenarios.py``), or plain
Locust with the scenario's config, which selects it by tag:
``locust -f loadtests/locustfile.py --config loadtests/fanout.conf --host URL``. A load shape
(ramp, step, soak: ``loadtests/shapes.py``) is one more file:
``locust -f loadtests/locustfile.py,loadtests/shape_step.py --config …``. Web UI:
``locust -f loadtests/locustfile.py --class-picker --host http://127.0.0.1:8080`` and pick a
reader class and a publisher. Distributed: the same file on ``--master`` and ``--worker``s.

Objectives (``--ssedge-max-p99-ms``, ``--ssedge-max-lost``, ``--ssedge-max-error-ratio``,
``--ssedge-min-hit-ratio``, ``--ssedge-max-connect-p99-ms``) are judged when Locust quits; a
missed one makes the exit code 1 and is named in the summary line. Readers marked slow are
held to "nothing lost", not to the latency objective.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import resource
import secrets
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from locust import FastHttpUser, User, between, events, tag, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadtests import hostile
from loadtests.scenarios import tags_of
from loadtests.sse import TALLIES, SSEUser, tls_context
from relay.protocol import tally

log = logging.getLogger("ssedge.load")

#: When this process's test started (storm clocks and publisher deadlines count from it).
STARTED = [time.time()]
#: X-Cache verdicts of edge requests in this process, by request name.
CACHE: dict[str, dict[str, int]] = defaultdict(lambda: {"hit": 0, "miss": 0, "none": 0})
#: Events this process's publisher had acknowledged (201).
PUBLISHED = [0]
#: Tries of one publish request (the first and its retries, all with one Idempotency-Key).
PUBLISH_ATTEMPTS = 3
#: The most users this run had at once.
PEAK_USERS = [0]
#: The latest totals each worker reported (the master sums them).
WORKER_TOTALS: dict[str, dict[str, int]] = {}


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    add = parser.add_argument_group("ssedge").add_argument
    add("--ssedge-scenario", default="custom", help="scenario name shown in the summary")
    add("--ssedge-token", default=os.environ.get("SSEDGE_PUBLISH_TOKEN", ""),
        help="publish token (SSEDGE_PUBLISH_TOKEN)")
    add("--ssedge-prefix", default="load", help="topic name prefix")
    add("--ssedge-rate", type=float, default=10.0, help="events per second per topic")
    add("--ssedge-payload", type=int, default=128, help="padding bytes per event")
    add("--ssedge-topics", type=int, default=20, help="topics in many-topics and edge-cache")
    add("--ssedge-storm-every", type=float, default=15.0, help="seconds between storms")
    add("--ssedge-storm-share", type=float, default=0.9, help="share of readers a storm drops")
    add("--ssedge-retry-ms", type=int, default=None,
        help="reconnect delay instead of the stream's retry:")
    add("--ssedge-slow-delay", type=float, default=0.5, help="slow readers' pause per 1 KiB")
    add("--ssedge-burst-size", type=int, default=500, help="events per burst")
    add("--ssedge-burst-every", type=float, default=5.0, help="seconds between bursts")
    add("--ssedge-churn-life", type=float, default=10.0,
        help="churn: mean seconds a reader's visit lasts (exponentially distributed)")
    add("--ssedge-churn-away", type=float, default=2.0,
        help="churn: most seconds a reader is away between visits")
    add("--ssedge-churn-resume", type=float, default=0.5,
        help="churn: share of returns that resume with Last-Event-ID (the rest are new)")
    add("--ssedge-subscribe-token", default=os.environ.get("SSEDGE_SUBSCRIBE_TOKEN", ""),
        help="private-topic: a subscriber token for private-* (SSEDGE_SUBSCRIBE_TOKEN)")
    add("--ssedge-ramp-share", type=float, default=0.8,
        help="ramp shape: share of the run time spent ramping up")
    add("--ssedge-steps", type=int, default=5, help="step shape: steps up to --users")
    add("--ssedge-publish-for", type=float, default=None,
        help="publish this long, then send each topic's last event (enables tail-loss checks)")
    add("--ssedge-settle", type=float, default=None,
        help="stop publishing this long before --run-time ends (a --ssedge-publish-for "
             "that follows the run time, e.g. in a scenario's .conf)")
    add("--ssedge-max-p99-ms", type=float, default=500.0, help="objective: event p99 latency")
    add("--ssedge-max-lost", type=int, default=0, help="objective: lost events")
    add("--ssedge-max-error-ratio", type=float, default=0.01, help="objective: failed/requests")
    add("--ssedge-min-hit-ratio", type=float, default=0.9, help="objective: edge X-Cache hits")
    add("--ssedge-max-connect-p99-ms", type=float, default=1000.0,
        help="objective: p99 time to connect (a stream's response head), reconnects included")
    add("--ssedge-hostile-source", default="127.0.0.2",
        help="hostile: the address the hostile source's requests come from")
    add("--ssedge-hostile-rate", type=float, default=200.0,
        help="hostile: the hostile source's requests per second (of every kind)")
    add("--ssedge-summary", default="", help="write the verdict as JSON to this file")


def _opt(environment: Environment, name: str) -> Any:
    return getattr(environment.parsed_options, f"ssedge_{name}")


@events.init.add_listener
def _one_scenario(environment: Environment, **_: Any) -> None:
    """With ``--tags`` (a scenario's config), only the classes with tasks left run: Locust
    filters tasks by tag but would still spawn, and fail, the classes it emptied."""
    if environment.parsed_options is None or not environment.parsed_options.tags:
        return
    environment._filter_tasks_by_tags()
    environment.user_classes[:] = [c for c in environment.user_classes if c.tasks]


#### Readers ###################################################################################

_topic_numbers = itertools.count()


def _storm_clock(environment: Environment) -> Iterator[float]:
    every = float(_opt(environment, "storm_every"))
    return (STARTED[0] + every * k for k in itertools.count(1))


class OneTopicReader(SSEUser):
    """A reader of the scenario's one topic, ``<prefix>-<suffix>``."""

    abstract = True
    suffix = ""

    @classmethod
    def topics(cls, environment: Environment) -> list[str]:
        return [f"{_opt(environment, 'prefix')}-{cls.suffix}"]

    @property
    def topic(self) -> str:
        return self.topics(self.environment)[0]


class FanoutReader(OneTopicReader):
    suffix = "fanout"

    @tag(*tags_of("FanoutReader"))
    @task
    def read(self) -> None:
        self.follow(self.topic)


class TopicsReader(SSEUser):
    @staticmethod
    def topics(environment: Environment) -> list[str]:
        prefix = _opt(environment, "prefix")
        return [f"{prefix}-topic-{i}" for i in range(int(_opt(environment, "topics")))]

    @tag(*tags_of("TopicsReader"))
    @task
    def read(self) -> None:
        topics = self.topics(self.environment)
        self.follow(topics[next(_topic_numbers) % len(topics)])


class StormReader(OneTopicReader):
    suffix = "storm"

    @tag(*tags_of("StormReader"))
    @task
    def read(self) -> None:
        self.follow(self.topic, storms=_storm_clock(self.environment))


class FastReader(OneTopicReader):
    suffix = "slow"

    @tag(*tags_of("FastReader"))
    @task
    def read(self) -> None:
        self.follow(self.topic)


class SlowReader(OneTopicReader):
    suffix = "slow"
    slow = True

    @tag(*tags_of("SlowReader"))
    @task
    def read(self) -> None:
        # A 4 KiB receive buffer and 1 KiB reads make the backlog stay on the relay's side.
        self.follow(self.topic, read_size=1024, rcvbuf=4096,
                    read_delay=float(_opt(self.environment, "slow_delay")))


class BurstReader(OneTopicReader):
    suffix = "burst"

    @tag(*tags_of("BurstReader"))
    @task
    def read(self) -> None:
        self.follow(self.topic)


class ChurnReader(OneTopicReader):
    """Readers that come and go: each visit lasts a random while, then the reader is away for
    up to ``--ssedge-churn-away`` s; it comes back resuming with its Last-Event-ID (and must
    get everything it missed), or, ``1 - churn-resume`` of the time, as a new reader from
    now on (its previous visit's tally is closed as left)."""

    suffix = "churn"

    @tag(*tags_of("ChurnReader"))
    @task
    def visit(self) -> None:
        life = random.expovariate(1 / max(0.1, float(_opt(self.environment, "churn_life"))))
        self.follow(self.topic, leave_at=time.time() + life)
        time.sleep(random.uniform(0.1, max(0.1, float(_opt(self.environment, "churn_away")))))
        if random.random() >= float(_opt(self.environment, "churn_resume")):
            self.tally.left = True
            self.tally = tally.Tally()
            TALLIES.append((self.tally, self.slow))
            self.last_event_id = None


class PrivateReader(SSEUser):
    """A reader of a private topic (``private-<prefix>``), with the subscriber token in the
    query as a browser's EventSource sends it (it cannot set headers)."""

    @staticmethod
    def topics(environment: Environment) -> list[str]:
        return [f"private-{_opt(environment, 'prefix')}"]

    @tag(*tags_of("PrivateReader"))
    @task
    def read(self) -> None:
        token = str(_opt(self.environment, "subscribe_token"))
        self.follow(self.topics(self.environment)[0], query="access_token=" + quote(token))


#### Publishers ################################################################################

class PublisherUser(FastHttpUser):
    """One publisher for the run: numbers its events per topic and stamps their send time."""

    abstract = True
    # an https:// edge's certificate is checked, as the readers check it (Locust's default
    # is not to)
    insecure = False
    ssl_context_factory = staticmethod(tls_context)
    fixed_count = 1
    batch_limit = 100

    def on_start(self) -> None:
        self.name = secrets.token_hex(4)
        self.seq: dict[str, int] = defaultdict(int)
        self.retired: dict[str, int] = defaultdict(int)
        self.finished = False
        self.headers = {"Authorization": f"Bearer {_opt(self.environment, 'token')}"}

    def topics(self) -> list[str]:
        """The topics of the reader classes in this run."""
        names = set()
        for cls in self.environment.user_classes:
            if issubclass(cls, SSEUser) and hasattr(cls, "topics"):
                names.update(cls.topics(self.environment))
        return sorted(names)

    def publishing(self) -> bool:
        """False once ``--ssedge-publish-for`` has passed; each topic then gets its last event."""
        publish_for = _opt(self.environment, "publish_for")
        run_time = self.environment.parsed_options.run_time
        if publish_for is None and _opt(self.environment, "settle") is not None and run_time:
            publish_for = max(0.0, float(run_time) - float(_opt(self.environment, "settle")))
        if publish_for is None or time.time() < STARTED[0] + float(publish_for):
            return True
        if not self.finished:
            self.finished = True
            for topic in self.topics():
                self.publish(topic, 1, last=True)
        return False

    def publish(self, topic: str, count: int, *, last: bool = False) -> None:
        pad = int(_opt(self.environment, "payload"))
        while count > 0:
            n = min(count, self.batch_limit)
            count -= n
            first = self.seq[topic] + 1
            self.seq[topic] += n
            now = time.time()
            body = [{"data": tally.encode(now, self.name, s, self.retired[topic],
                                          last and s == first + n - 1, pad)}
                    for s in range(first, first + n)]
            if self.send(f"/v1/streams/{topic}/events", body):
                PUBLISHED[0] += n
            else:
                # Never acknowledged: readers are told, through later events, not to count
                # these numbers as lost.
                self.retired[topic] += n

    def send(self, path: str, body: list[dict[str, str]]) -> bool:
        """One publish, sent again with the same Idempotency-Key (and the same bytes) after a
        503, a timeout or a lost connection: acknowledged at most once, written once."""
        headers = {**self.headers, "Idempotency-Key": str(uuid.uuid4())}
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            with self.client.post(path, json=body, headers=headers, name="publish",
                                  catch_response=True) as response:
                if response.status_code == 201:
                    return True
                answer = (response.text or str(response.error or ""))[:200]
                response.failure(f"HTTP {response.status_code}: {answer}")
                # 0: no answer (refused, reset, timed out); 502-504: not known to be written
                if response.status_code not in (0, 502, 503, 504):
                    return False
            if attempt < PUBLISH_ATTEMPTS:
                time.sleep(min(1.0, 0.1 * 2 ** attempt))
        return False


class SteadyPublisher(PublisherUser):
    """``--ssedge-rate`` events per second on every topic, sent every 50 ms or slower."""

    wait_time = between(0, 0)

    @tag(*tags_of("SteadyPublisher"))
    @task
    def steady(self) -> None:
        rate = float(_opt(self.environment, "rate"))
        tick = max(0.05, 1 / rate)
        begun = time.time()
        sent = 0
        while self.publishing():
            due = int((time.time() - begun) * rate) - sent
            if due > 0:
                for topic in self.topics():
                    self.publish(topic, due)
                sent += due
            time.sleep(tick)
        time.sleep(3600)  # done: idle until the run stops


class BurstPublisher(PublisherUser):
    """``--ssedge-burst-size`` events as fast as the relay takes them, every few seconds."""

    wait_time = between(0, 0)

    @tag(*tags_of("BurstPublisher"))
    @task
    def bursts(self) -> None:
        every = float(_opt(self.environment, "burst_every"))
        size = int(_opt(self.environment, "burst_size"))
        time.sleep(1.0)  # let readers connect first
        while self.publishing():
            for topic in self.topics():
                self.publish(topic, size)
            time.sleep(every)
        time.sleep(3600)


#### Edge ######################################################################################

class EdgeClient(FastHttpUser):
    """Handshake and metadata traffic, as page loads cause it; counts Varnish's X-Cache."""

    insecure = False
    ssl_context_factory = staticmethod(tls_context)

    wait_time = between(0.01, 0.05)

    @tag(*tags_of("EdgeClient"))
    @task(1)
    def handshake(self) -> None:
        self._get("/v1/handshake", "handshake")

    @tag(*tags_of("EdgeClient"))
    @task(4)
    def metadata(self) -> None:
        number = next(_topic_numbers) % int(_opt(self.environment, "topics"))
        self._get(f"/v1/streams/{_opt(self.environment, 'prefix')}-edge-{number}", "metadata")

    def _get(self, path: str, name: str) -> None:
        with self.client.get(path, name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
            verdict = (response.headers.get("x-cache") or "").lower()
            CACHE[name]["hit" if "hit" in verdict else "miss" if verdict else "none"] += 1


#### A hostile source ##########################################################################

class HostileClient(User):
    """One source address abusing the edge in several ways at once (``loadtests/hostile.py``):
    streams on random topics held open, random replay pages, odd spellings, operator endpoints
    in absolute form, publishes with made-up tokens. Its answers are tallied, not reported as
    requests: the run is judged by the ordinary users' objectives (and nothing leaked)."""

    fixed_count = 1
    wait_time = between(0, 0)

    def on_start(self) -> None:
        assert self.host is not None
        self.source = hostile.Source(self.host, str(_opt(self.environment, "hostile_source")),
                                     tls_context)

    def on_stop(self) -> None:
        self.source.close()

    @tag(*tags_of("HostileClient"))
    @task
    def abuse(self) -> None:
        pause = 1 / max(1.0, float(_opt(self.environment, "hostile_rate")))
        while True:
            begun = time.monotonic()
            self.source.once()
            time.sleep(max(0.0, pause - (time.monotonic() - begun)))


#### Verdict ###################################################################################

def local_totals() -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for t, slow in TALLIES:
        totals["readers"] += 1
        totals["received"] += t.received
        totals["lost"] += t.lost
        totals["duplicates"] += t.duplicates
        totals["out_of_order"] += t.out_of_order + t.id_regressions
        totals["replayed"] += t.replayed
        tail, unfinished = t.missing_tail()
        if slow:
            totals["slow_behind"] += tail + unfinished
        elif t.left:
            totals["left"] += 1  # what came after it left is not owed to it
        else:
            totals["tail_lost"] += tail
            totals["unfinished"] += unfinished
        if not t.publishers:
            totals["silent"] += 1
    totals["published"] += PUBLISHED[0]
    for kind, n in hostile.COUNTS.items():
        totals[f"hostile_{kind}"] += n
    usage = resource.getrusage(resource.RUSAGE_SELF)
    totals["client_cpu_ms"] += round((usage.ru_utime + usage.ru_stime) * 1000)
    for name, counts in CACHE.items():
        for verdict, n in counts.items():
            totals[f"{name}_{verdict}"] += n
    return dict(totals)


@events.test_start.add_listener
def _started(environment: Environment, **_: Any) -> None:
    STARTED[0] = time.time()


@events.spawning_complete.add_listener
def _spawned(user_count: int, **_: Any) -> None:
    PEAK_USERS[0] = max(PEAK_USERS[0], user_count)


@events.report_to_master.add_listener
def _report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    data["ssedge"] = local_totals()


@events.worker_report.add_listener
def _worker_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    if "ssedge" in data:
        WORKER_TOTALS[client_id] = data["ssedge"]


def _connect_p99(stats: Any) -> float | None:
    """p99 of the time to a stream's response head, first connects and reconnects together."""
    from locust.stats import StatsEntry

    entries = [e for e in (stats.entries.get((n, "SSE")) for n in ("connect", "reconnect"))
               if e is not None and e.num_requests]
    if not entries:
        return None
    both = StatsEntry(stats, "connect+reconnect", "SSE")
    for entry in entries:
        both.extend(entry)
    return float(both.get_response_time_percentile(0.99))


def verdict(environment: Environment, totals: dict[str, int]) -> dict[str, Any]:
    """The run's figures and each objective, met or missed."""
    stats = environment.stats
    event = stats.entries.get(("event", "SSE"))
    others = [stats.entries.get((name, "SSE")) for name in ("event slow", "event replayed")]
    started = stats.start_time or time.time()
    duration = max(1e-9, (stats.last_request_timestamp or started) - started)
    total = stats.total
    figures: dict[str, Any] = {
        "scenario": _opt(environment, "scenario"),
        "users": PEAK_USERS[0],
        "duration_s": round(duration, 1),
        "delivered": sum(e.num_requests for e in (event, *others) if e is not None),
        "p50_ms": event.get_response_time_percentile(0.5) if event else None,
        "p99_ms": event.get_response_time_percentile(0.99) if event else None,
        "connect_p99_ms": _connect_p99(stats),
        "requests": total.num_requests,
        "failures": total.num_failures,
        **totals,
    }
    figures["deliveries_per_s"] = round(figures["delivered"] / duration)
    publish = stats.entries.get(("publish", "POST"))
    figures["publish_requests"] = publish.num_requests if publish else 0
    lost = totals.get("lost", 0) + totals.get("tail_lost", 0) + totals.get("unfinished", 0)
    figures["lost_total"] = lost
    missed: list[str] = []
    readers = totals.get("readers", 0)
    if readers:
        if not totals.get("published"):
            missed.append("nothing was published (check the publish token)")
        if not figures["delivered"]:
            missed.append("no events delivered")
        elif figures["p99_ms"] > _opt(environment, "max_p99_ms"):
            missed.append(f"p99 {figures['p99_ms']:.0f} ms > {_opt(environment, 'max_p99_ms')}")
        connect = figures["connect_p99_ms"]
        if connect is not None and connect > _opt(environment, "max_connect_p99_ms"):
            missed.append(f"connect p99 {connect:.0f} ms > "
                          f"{_opt(environment, 'max_connect_p99_ms')}")
        if lost > _opt(environment, "max_lost"):
            missed.append(f"lost {lost} > {_opt(environment, 'max_lost')}")
        if totals.get("duplicates", 0) or totals.get("out_of_order", 0):
            missed.append(f"duplicates {totals.get('duplicates', 0)}, "
                          f"out of order {totals.get('out_of_order', 0)}")
    ratio = total.num_failures / total.num_requests if total.num_requests else 0.0
    figures["error_ratio"] = round(ratio, 5)
    if ratio > _opt(environment, "max_error_ratio"):
        missed.append(f"error ratio {ratio:.4f} > {_opt(environment, 'max_error_ratio')}")
    hits = sum(v for k, v in totals.items() if k.endswith("_hit"))
    looked = hits + sum(v for k, v in totals.items() if k.endswith(("_miss", "_none")))
    if looked:
        figures["hit_ratio"] = round(hits / looked, 4)
        if totals.get("handshake_none", 0) + totals.get("metadata_none", 0) == looked:
            missed.append("no X-Cache header: not behind the Varnish edge")
        elif figures["hit_ratio"] < _opt(environment, "min_hit_ratio"):
            missed.append(f"hit ratio {figures['hit_ratio']} < "
                          f"{_opt(environment, 'min_hit_ratio')}")
    if totals.get("hostile_leaked", 0):
        missed.append(f"an operator endpoint answered the hostile source "
                      f"{totals['hostile_leaked']} time(s)")
    crashes = sum(e["count"] for e in environment.runner.exceptions.values()) \
        if environment.runner is not None else 0
    if crashes:
        missed.append(f"{crashes} exception(s) in the load code (see the report)")
    figures["client_cpu_pct"] = round(totals.get("client_cpu_ms", 0) / 10 / duration)
    if figures["client_cpu_pct"] >= 80 and not isinstance(environment.runner, MasterRunner):
        figures["note"] = ("the load client used most of a core: latencies include its own "
                           "queueing (run more workers)")
    figures["missed"] = missed
    figures["passed"] = not missed
    return figures


def summary_line(f: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}ms"

    parts = [
        f"{f['scenario']} {'PASS' if f['passed'] else 'FAIL'}",
        f"users={f['users']}", f"readers={f.get('readers', 0)}",
        f"duration={f['duration_s']}s", f"published={f.get('published', 0)}",
        f"delivered={f['delivered']}", f"deliveries/s={f['deliveries_per_s']}",
        f"p50={ms(f['p50_ms'])}", f"p99={ms(f['p99_ms'])}",
        f"connect_p99={ms(f.get('connect_p99_ms'))}",
        f"lost={f['lost_total']}", f"dup={f.get('duplicates', 0)}",
        f"ooo={f.get('out_of_order', 0)}", f"replayed={f.get('replayed', 0)}",
        f"errors={f['failures']}/{f['requests']}", f"client_cpu={f['client_cpu_pct']}%",
    ]
    if "hit_ratio" in f:
        parts.append(f"hit_ratio={f['hit_ratio']}")
    if f.get("slow_behind"):
        parts.append(f"slow_behind={f['slow_behind']}")
    if f["missed"]:
        parts.append("missed: " + "; ".join(f["missed"]))
    if f.get("note"):
        parts.append(f"note: {f['note']}")
    return " ".join(parts)


@events.quitting.add_listener
def _judge(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    if isinstance(environment.runner, MasterRunner):
        totals: dict[str, int] = defaultdict(int)
        for worker in WORKER_TOTALS.values():
            for key, value in worker.items():
                totals[key] += value
    else:
        totals = defaultdict(int, local_totals())
    figures = verdict(environment, dict(totals))
    line = summary_line(figures)
    log.info("ssedge load: %s", line)
    path = _opt(environment, "summary")
    if path:
        Path(path).write_text(json.dumps({**figures, "line": line}, indent=2) + "\n")
    environment.process_exit_code = 0 if figures["passed"] else 1
