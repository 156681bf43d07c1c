"""Process-wide counters and gauges, rendered in the Prometheus text format.

Plain attributes incremented on the hot paths (no locks: one event loop per process). Each
Granian worker is its own process with its own numbers, labelled by its ``worker`` slot;
``relay.scrape`` answers a scrape with all of a node's workers.

Latencies that users feel are histograms (buckets in seconds): a publish's answer, a stream's
first bytes, a catch-up from history. Each is observed once per request or catch-up, never
per event.
"""

from __future__ import annotations

from relay.prometheus import Exposition, Histogram, ProcessMetrics

# a publish is a Redis round trip (plus WAIT on a cluster, up to its timeout, 1 s by default)
PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
# a stream's first bytes wait for its topic's priming (a new topic: one XREVRANGE)
FIRST_BYTE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                      5)
# a catch-up reads history pages until it reaches the ring: one page or thousands
CATCHUP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics(ProcessMetrics):
    """A relay node's numbers (one per worker process)."""

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self.streams_open = 0
        self.streams_total = 0
        self.events_in = 0  # entries read from Redis by the feed
        self.events_out = 0  # frames written to clients (one per client per event)
        self.sends = 0  # writes to clients; events_out / sends is the coalescing factor
        self.parked_sends = 0  # of which made by the feed to parked connections (relay.fanout)
        self.bytes_out = 0
        self.compressed_streams = 0  # one-topic streams sent compressed (relay.node.shared)
        self.shared_sends = 0  # of the parked sends, a topic's shared compressed bytes
        self.backlog_drops = 0  # clients closed because they fell too far behind
        self.drained = 0  # streams closed by a drain (SIGTERM), told to come back soon
        # streams refused for a while (answered 200 + retry), by reason (relay.stream.refuse)
        self.refused_streams: dict[str, int] = {}
        self.heartbeats = 0
        self.redis_reconnects = 0
        self.feed_reads = 0
        self.feed_keys = 0  # keys the last blocking XREAD named (the hot topics)
        self.cold_reads = 0  # XREADs of cold topics (each new one once, and when written)
        self.published = 0
        self.publish_requests = 0
        self.publish_replays = 0  # answered from an Idempotency-Key's first answer
        self.publish_unreplicated = 0  # keyless, written, not confirmed by replicas in time
        self.catchups = 0  # streams that needed history older than the ring
        self.resumes = 0  # streams that fell behind the ring's tail and caught up in place
        self.resets = 0  # ssedge.reset events sent
        self.replay_fetches = 0  # pages asked of the replay service
        self.replay_shared = 0  # page requests served by a fetch already under way
        self.replay_cache_hits = 0  # page requests served from the relay's page cache
        self.replay_fallbacks = 0  # replay service failed: the page was read from Redis
        self.redis_history_reads = 0  # pages read from Redis by this relay
        self.replay_fresh_reads = 0  # pages read from Redis because a cached one was too old
        self.idle_deleted = 0  # streams this process deleted for having no publish for long
        self.rewinds = 0  # watched streams found to have gone back (deleted, failover)
        self.feed_gaps = 0  # reads that jumped over entries retention had trimmed
        self.catchup_stalls = 0  # catching-up streams closed for a send the client never took
        self.invalid_entries = 0  # stream entries with a field that could not be framed as sent
        # seconds from the newest entry's id time to the feed reading it, at the last read
        # that returned entries; 0 after a read that found nothing new
        self.feed_lag_s = 0.0
        self.publish_seconds = Histogram(PUBLISH_BUCKETS)
        self.first_byte_seconds = Histogram(FIRST_BYTE_BUCKETS)
        self.catchup_seconds = Histogram(CATCHUP_BUCKETS)

    def refused(self, reason: str) -> None:
        self.refused_streams[reason] = self.refused_streams.get(reason, 0) + 1

    def samples(self, out: Exposition) -> None:
        metric, counter = out.metric, out.counter
        out.gauge("streams_open", "Event streams open now.", self.streams_open)
        counter("streams_total", "Event streams opened.", self.streams_total)
        counter("events_in_total", "Stream entries read from Redis by the feed.", self.events_in)
        counter("events_out_total", "Events written to clients (per client).", self.events_out)
        counter("sends_total", "Writes to clients (several events may share one).", self.sends)
        counter("parked_sends_total", "Of those, made by the feed without waking the stream.",
                self.parked_sends)
        counter("bytes_out_total", "Bytes of events written to clients.", self.bytes_out)
        counter("compressed_streams_total", "Streams sent compressed (gzip or deflate).",
                self.compressed_streams)
        counter("shared_sends_total", "Parked sends of a topic's shared compressed bytes.",
                self.shared_sends)
        counter("backlog_drops_total", "Clients closed for falling behind.", self.backlog_drops)
        counter("drained_total", "Streams closed by a drain, told to come back soon.",
                self.drained)
        metric("refused_streams_total", "counter",
               "Streams refused for a while (answered 200 with a retry), by reason.",
               [({"reason": r}, n) for r, n in sorted(self.refused_streams.items())])
        counter("heartbeats_total", "Heartbeat comments written.", self.heartbeats)
        counter("redis_reconnects_total", "Feed reconnections to Redis.", self.redis_reconnects)
        counter("feed_reads_total", "Blocking XREAD calls that returned.", self.feed_reads)
        out.gauge("feed_keys", "Keys the feed's last XREAD named (hot topics; cold ones are "
                  "watched apart).", self.feed_keys)
        counter("cold_reads_total", "Reads of cold topics: once each when new, and when "
                "written.", self.cold_reads)
        counter("published_total", "Events published through this node.", self.published)
        counter("publish_requests_total", "Publish requests answered 201.", self.publish_requests)
        counter("publish_replays_total", "Of those, a retry given its key's first answer.",
                self.publish_replays)
        counter("catchups_total", "Streams that needed history older than the ring.",
                self.catchups)
        counter("resumes_total", "Streams that fell behind the ring and caught up in place.",
                self.resumes)
        counter("resets_total", "ssedge.reset events sent.", self.resets)
        counter("replay_fetches_total", "History pages asked of the replay service.",
                self.replay_fetches)
        counter("replay_shared_total", "Page requests joined to a fetch under way.",
                self.replay_shared)
        counter("replay_cache_hits_total", "Page requests served from the page cache.",
                self.replay_cache_hits)
        counter("replay_fallbacks_total", "Replay service failed; page read from Redis.",
                self.replay_fallbacks)
        counter("redis_history_reads_total", "History pages read from Redis by this relay.",
                self.redis_history_reads)
        counter("replay_fresh_reads_total",
                "History pages read from Redis because a cached page proved too old.",
                self.replay_fresh_reads)
        counter("idle_streams_deleted_total", "Topic streams this process deleted after "
                "SSEDGE_IDLE_STREAM_S without a publish.", self.idle_deleted)
        counter("rewinds_total", "Watched streams found to have gone back; their streams "
                "were ended to start over.", self.rewinds)
        counter("publishes_unreplicated_total", "Keyless publishes written but not confirmed "
                "by the replicas asked for in time (answered 201, replicated false).",
                self.publish_unreplicated)
        counter("feed_gaps_total", "Feed reads that jumped over entries retention had "
                "trimmed (the feed stalled past it); each told to readers by a reset.",
                self.feed_gaps)
        counter("catchup_stalls_total",
                "Catching-up streams closed: one send not taken for two sweeps.",
                self.catchup_stalls)
        counter("invalid_entries_total", "Stream entries with an unusable field.",
                self.invalid_entries)
        out.gauge("feed_lag_seconds",
                  "Newest entry read: seconds from its id's time (Redis's clock) to the feed.",
                  self.feed_lag_s)
        out.histogram("publish_duration_seconds",
                      "Publishes answered 201: seconds from the request to the answer.",
                      self.publish_seconds)
        out.histogram("stream_first_byte_seconds",
                      "Event streams served: seconds from the request to their first bytes.",
                      self.first_byte_seconds)
        out.histogram("catchup_duration_seconds",
                      "Catch-ups from history pages: seconds until the stream reached the ring.",
                      self.catchup_seconds)
