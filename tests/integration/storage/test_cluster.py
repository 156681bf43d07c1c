"""ssedge on a real local Redis Cluster: 3 primaries, 3 replicas, 3 relay nodes (and ingest).

Topics spread over every primary (the hash tag is the topic), every client of every relay gets
every event of its topic in order, each relay reads a primary over two connections whatever
the number of topics, and a primary SIGKILLed mid-stream is replaced by its replica without
losing an acknowledged event (publishes wait for one replica: ``SSEDGE_PUBLISH_REPLICAS``).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from redis.cluster import ClusterNode as ClusterNodeSync
from redis.cluster import RedisCluster as RedisClusterSync

from relay.dashboard import collector, stats
from relay.harness.cluster import LocalCluster
from relay.harness.servers import IngestProcess, Relay, metrics
from relay.protocol.ids import parse
from relay.protocol.wire import Event
from relay.storage import clients
from relay.storage import streams as store
from relay.web import client
from relay.web.client import EventStream
from tests.integration.conftest import TOKEN
from tests.integration.sse import collect, subscribe
from tests.integration.upstreams import Upstreams, url

TOPICS = 100


@pytest.fixture
def relays(cluster_relays: Callable[..., list[Relay]]) -> list[Relay]:
    return cluster_relays(3, heartbeat_s=0.5, max_connections=1000)


def _slot_owner(cluster: LocalCluster) -> dict[int, int]:
    """slot -> port of the primary serving it."""
    owner = {}
    for node in cluster.nodes():
        if node["role"] != "primary":
            continue
        for part in node["slots"].split():
            if part.startswith("["):
                continue  # a slot being migrated
            lo, _, hi = part.partition("-")
            for slot in range(int(lo), int(hi or lo) + 1):
                owner[slot] = int(node["port"])
    return owner


def _placement(cluster: LocalCluster, topics: list[str]) -> dict[str, int]:
    owner = _slot_owner(cluster)
    port = cluster.primaries()[0]
    return {t: owner[int(cluster.cli(port, "CLUSTER", "KEYSLOT", store.stream_key(t)))]
            for t in topics}


@dataclass
class Reader:
    topic: str
    es: EventStream
    events: list[Event] = field(default_factory=list)

    async def run(self) -> None:
        self.events.extend(getattr(self.es, "early", []))
        while not self.es.ended:
            self.events.extend(e for e in await self.es.read_chunk() if isinstance(e, Event))


async def _follow(relays: list[Relay], topics: list[str]) -> tuple[list[Reader], list[Any]]:
    """A stream of every topic on every relay (clients on every node)."""
    sem = asyncio.Semaphore(50)

    async def one(relay: Relay, topic: str) -> Reader:
        async with sem:
            return Reader(topic, await subscribe(f"{relay.url}/v1/streams/{topic}/events"))

    readers = list(await asyncio.gather(*(one(r, t) for r in relays for t in topics)))
    return readers, [asyncio.ensure_future(r.run()) for r in readers]


async def _until_all(readers: list[Reader], want: dict[str, set[str]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(want[r.topic] <= {e.id for e in r.events} for r in readers):
            return
        await asyncio.sleep(0.1)


def _tracking_clients(cluster: LocalCluster, port: int) -> tuple[int, int]:
    """(tracking readers, listeners of invalidations) connected to one node. The listeners
    are counted on their channel: a relay's other subscription (the operators' orders,
    relay/node/revocation.py) is no feed's."""
    lines = cluster.cli(port, "CLIENT", "LIST").splitlines()
    fields = [dict(kv.split("=", 1) for kv in line.split() if "=" in kv) for line in lines]
    tracking = sum("t" in f.get("flags", "") for f in fields)
    numsub = cluster.cli(port, "PUBSUB", "NUMSUB", "__redis__:invalidate").split()
    return tracking, int(numsub[-1])


def test_hundred_topics_over_three_primaries_every_event_to_every_relay_in_order(
    cluster: LocalCluster, relays: list[Relay],
) -> None:
    topics = [f"topic-{n:03d}" for n in range(TOPICS)]
    placement = _placement(cluster, topics)
    per_primary = {p: sum(1 for t in topics if placement[t] == p) for p in cluster.primaries()}
    assert len(per_primary) == 3 and all(per_primary.values()), per_primary

    async def run() -> None:
        # metadata first, before anything else has used a relay's cluster client
        for relay in relays:
            meta = await client.request("GET", f"{relay.url}/v1/streams/{topics[0]}")
            assert meta.status == 200 and meta.json()["length"] == 0, meta.body
        readers, tasks = await _follow(relays, topics)
        published: dict[str, list[str]] = {t: [] for t in topics}
        sem = asyncio.Semaphore(20)

        async def publish(n: int, topic: str, round_: int) -> None:
            target = relays[(n + round_) % len(relays)]  # every relay publishes
            async with sem:
                response = await client.request(
                    "POST", f"{target.url}/v1/streams/{topic}/events",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    json_body=[{"data": f"{round_}.{i}"} for i in range(2)])
            assert response.status == 201, response.body
            published[topic] += response.json()["ids"]

        started = time.monotonic()
        for round_ in range(10):
            await asyncio.gather(*(publish(n, t, round_) for n, t in enumerate(topics)))
        took = time.monotonic() - started
        want = {t: set(ids) for t, ids in published.items()}
        await _until_all(readers, want, 20)
        for r in readers:
            got = [e.id for e in r.events]
            assert got == published[r.topic], f"{r.topic}: {len(got)} events, not in order " \
                f"or not the {len(published[r.topic])} published"
        # each relay process reads a primary over one tracking reader and one listener,
        # however many of the 100 topics the primary holds
        for port in cluster.primaries():
            assert _tracking_clients(cluster, port) == (3, 3), port
        for relay in relays:
            m = await metrics(relay.url)
            assert m["ssedge_streams_open"] == TOPICS
            assert m["ssedge_feed_cluster_nodes"] == 3
        for task in tasks:
            task.cancel()
        for r in readers:
            r.es.close()
        # the dashboard's collector publishes its snapshots to the cluster as well
        stop = asyncio.Event()
        collecting = asyncio.ensure_future(collector.collect(collector.Options(
            relays=tuple(r.url for r in relays), redis_url="redis://127.0.0.1:1/0",
            redis_cluster=cluster.seeds, interval_s=0.2), stop))
        await asyncio.sleep(1.0)
        stop.set()
        await collecting
        async with await subscribe(
                f"{relays[0].url}/v1/streams/{stats.TOPIC}/events?backfill=1") as es:
            snapshot = json.loads((await collect(es, 1, timeout=10))[0].data)
        assert [n["up"] for n in snapshot["nodes"]] == [True] * 3, snapshot
        events = sum(len(v) for v in published.values())
        print(f"{TOPICS} topics over primaries {per_primary}; {events} events published in "
              f"{took:.1f} s, each to 3 relays x 1 stream per topic ({len(readers)} streams)")

    asyncio.run(run())


def _unexpected(relay: Relay) -> str:
    """The relay's log from its first unexpected error on (for a failure's message)."""
    text = relay.log.read_text(errors="replace")
    at = text.find("unexpected error")
    return text[at:at + 4000] if at >= 0 else "(no unexpected error in the relay's log)"


@dataclass
class TopicPublisher:
    """Publishes one event after another to one topic, retrying each until acknowledged,
    with one Idempotency-Key per event."""

    topic: str
    relays: list[Relay]
    acked: list[str] = field(default_factory=list)  # ids, in order
    attempts: dict[str, int] = field(default_factory=dict)  # data -> tries
    refused: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        seq = 0
        n = 0
        while not stop.is_set():
            data = str(seq)
            self.attempts[data] = self.attempts.get(data, 0) + 1
            target = self.relays[n % len(self.relays)]
            n += 1
            try:
                response = await client.request(
                    "POST", f"{target.url}/v1/streams/{self.topic}/events",
                    headers={"Authorization": f"Bearer {TOKEN}",
                             "Idempotency-Key": f"{self.topic}-{data}"},
                    json_body={"data": data}, timeout=5)
            except (OSError, TimeoutError):
                response = None
            if response is not None and response.status == 201:
                self.acked.append(response.json()["id"])
                seq += 1
                await asyncio.sleep(0.1)
            else:
                assert response is None or response.status == 503, (
                    response.body, _unexpected(target))
                self.refused += 1
                await asyncio.sleep(0.1)


def test_primary_killed_mid_stream_its_replica_takes_over_no_acknowledged_event_lost(
    cluster: LocalCluster, relays: list[Relay],
) -> None:
    topics = [f"failover-{n:02d}" for n in range(60)]
    placement = _placement(cluster, topics)
    victim = placement[topics[0]]
    replica = cluster.replica_of(victim)
    on_victim = [t for t in topics if placement[t] == victim]

    async def run() -> None:
        readers, tasks = await _follow(relays, topics)
        publishers = [TopicPublisher(t, relays) for t in topics]
        stop = asyncio.Event()
        running = [asyncio.ensure_future(p.run(stop)) for p in publishers]
        await asyncio.sleep(2.0)
        before = {p.topic: len(p.acked) for p in publishers}
        cluster.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        # the replica is promoted after cluster-node-timeout (1 s) and an election
        while replica not in cluster.primaries():
            assert time.monotonic() - killed < 15, "the replica was not promoted"
            await asyncio.sleep(0.1)
        promoted = time.monotonic() - killed
        # restarted (as systemd would), the old primary rejoins as the new one's replica: until
        # it is in sync, publishes to its topics are refused (no replica to confirm them)
        await asyncio.to_thread(cluster.start_node, victim)
        await asyncio.to_thread(cluster.wait_ok, 20)
        rejoined = time.monotonic() - killed
        await asyncio.sleep(1.0)
        # and a graceful failover back (CLUSTER FAILOVER on the replica): the relays find the
        # slots' new home through MOVED
        await asyncio.to_thread(cluster.cli, victim, "CLUSTER", "FAILOVER")
        while victim not in cluster.primaries():
            assert time.monotonic() - killed < 40, "CLUSTER FAILOVER did not happen"
            await asyncio.sleep(0.1)
        await asyncio.to_thread(cluster.wait_ok, 20)
        failed_back = time.monotonic() - killed
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*running)
        by_topic = {p.topic: p for p in publishers}
        # publishing resumed on the failed-over topics
        for t in on_victim:
            assert len(by_topic[t].acked) > before[t] + 5, t
        want = {t: set(p.acked) for t, p in by_topic.items()}
        await _until_all(readers, want, 20)

        # Redis still holds every acknowledged event (read through the new primary), and
        # each event once: a retry of a publish that was written found its key (the script's
        # writes replicate as one transaction: the stream and the key travel together)
        r = clients.cluster_client(cluster.seeds)
        try:
            for t in topics:
                entries = await r.xrange(store.stream_key(t))
                stored = [e[0].decode() for e in entries]
                assert set(by_topic[t].acked) <= set(stored), f"{t}: an acknowledged event lost"
                data = [dict(zip(e[1][::2], e[1][1::2], strict=True))[b"d"] for e in entries]
                assert len(data) == len(set(data)), f"{t}: an event written twice"
        finally:
            await r.aclose()

        for rd in readers:
            p = by_topic[rd.topic]
            got = [e.id for e in rd.events]
            assert got == sorted(set(got), key=parse), f"{rd.topic}: duplicate or out of order"
            assert set(p.acked) <= set(got), f"{rd.topic}: acknowledged events missing"
            # the only extras: an event written on the killed primary and read by the relays
            # before it died unreplicated (its publish was answered 503 and sent again)
            extra = [e.data for e in rd.events if e.id not in want[rd.topic]]
            assert all(p.attempts.get(d, 0) > 1 for d in extra), (rd.topic, extra)
        for task in tasks:
            task.cancel()
        for rd in readers:
            rd.es.close()
        acked = sum(len(p.acked) for p in publishers)
        refused = sum(p.refused for p in publishers)
        print(f"{len(topics)} topics ({len(on_victim)} on the killed primary), {acked} events "
              f"acknowledged, {refused} publishes refused (503) and retried; replica promoted "
              f"{promoted:.1f} s after the kill, the old primary back as its replica after "
              f"{rejoined:.1f} s, primary again (CLUSTER FAILOVER) after {failed_back:.1f} s; "
              f"every acknowledged event reached all {len(readers)} streams in order, none "
              "lost in Redis")

    asyncio.run(run())


def test_ingest_on_the_cluster_lands_every_upstream_event_once_in_order(
    tmp_path: Path, cluster: LocalCluster, upstreams: Upstreams,
) -> None:
    # the journal's script touches the stream, the cursor hash and the lease: all three carry
    # the topic's hash tag, so they share its slot and the script runs on one primary
    up = upstreams.demo(prefix="C", count=150, interval=0.004, drop_every=8, retry_ms=20,
                        replay_all=True, seed=3)
    unused = SimpleNamespace(url="redis://127.0.0.1:1/0")
    ingest = IngestProcess(tmp_path, unused, ["--topic", "fan-in", "--from",  # type: ignore[arg-type]
                                              f"c={url(up)}"], redis_cluster=cluster.seeds,
                           ingest_retry_ms=50, ingest_backoff_max_s=0.5, ingest_lease_ms=600)
    try:
        with RedisClusterSync(startup_nodes=[ClusterNodeSync("127.0.0.1", p)
                                             for p in cluster.ports[:1]],
                              decode_responses=True) as r:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and r.xlen(store.stream_key("fan-in")) < 150:
                time.sleep(0.05)
            time.sleep(0.5)  # a duplicate would show up here
            entries = r.xrange(store.stream_key("fan-in"))
        got = [fields["i"] for _, fields in entries]
        assert got == up.ids, f"{len(got)} of {len(up.ids)}, duplicated or out of order"
        assert up.connections >= 10  # it dropped, and every reconnect resumed by id
        assert ingest.metric("duplicates_total", "c") == 0
    finally:
        ingest.stop()


def test_a_publish_whose_wait_timed_out_is_retried_with_its_key_and_written_once(
    cluster: LocalCluster, relays: list[Relay],
) -> None:
    topic = "idem-wait"
    primary = _placement(cluster, [topic])[topic]
    replica = cluster.processes[cluster.replica_of(primary)]
    url = "{}/v1/streams/" + topic + "/events"

    def stored() -> list[str]:
        out = cluster.cli(primary, "XRANGE", store.stream_key(topic), "-", "+")
        return [line for line in out.split("\n") if line[:1].isdigit() and "-" in line]

    async def post(relay: Relay, body: Any, key: str) -> client.Response:
        return await client.request("POST", url.format(relay.url), json_body=body, headers={
            "Authorization": f"Bearer {TOKEN}", "Idempotency-Key": key})

    async def run() -> None:
        # the script and its WAIT on the topic's primary: one entry, whichever relay
        first = await post(relays[0], {"data": "a"}, "k-1")
        again = await post(relays[1], {"data": "a"}, "k-1")
        assert first.status == again.status == 201 and first.body == again.body
        assert again.headers["idempotent-replayed"] == "true"
        replica.send_signal(signal.SIGSTOP)  # its primary's WAIT 1 now times out
        try:
            refused = await post(relays[1], [{"data": "b"}, {"data": "c"}], "k-2")
            assert refused.status == 503, refused.body
            assert "not acknowledged" in refused.json()["message"]
            assert len(stored()) == 3  # written, not known to be safe
        finally:
            replica.send_signal(signal.SIGCONT)
        await asyncio.to_thread(cluster.wait_ok, 20)  # the replica is back and in sync
        retried = await post(relays[2], [{"data": "b"}, {"data": "c"}], "k-2")
        assert retried.status == 201, retried.body
        assert retried.headers["idempotent-replayed"] == "true"
        assert retried.json() == {"ids": stored()[1:]}

    asyncio.run(run())
    assert len(stored()) == 3
