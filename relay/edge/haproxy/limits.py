"""The edge's per-client limits and refusals, as data: what ``haproxy.cfg`` enforces with its
stick tables, what each refusal answers, and the names its counters go by.

One table each, read by the config's renderer (``config.render`` sets the ``presetenv`` lines
named here), by the dashboard's view of the edge (``stats.proxy_snapshot`` counts each
refusal by its backend) and by the docs (docs/SECURITY.md lists the same rows).

HAProxy compares a counter with its limit before any relay, varnishd or Redis work: a stick
table keyed by the client's address (streams, other requests) or by a hash of its
``Authorization`` header (publishes). Rates are counted over 10 s, so a short burst (a crowd
behind one address reconnecting together) is averaged, and a flood is cut within seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit: its ``presetenv`` in haproxy.cfg, its setting (``SSEDGE_EDGE_*``), its
    default and what it counts."""

    env: str
    setting: str
    default: int
    counts: str


LIMITS = (
    Limit("EDGE_STREAMS_PER_SOURCE", "edge_streams_per_source", 5000,
          "event streams open at once from one client address"),
    Limit("EDGE_STREAM_OPENS_PER_10S", "edge_stream_opens_per_10s", 500,
          "event streams asked for from one client address in 10 s (refused ones count)"),
    Limit("EDGE_REQUESTS_PER_10S", "edge_requests_per_10s", 1000,
          "other requests (handshake, metadata, replay pages, pages) from one address in 10 s"),
    Limit("EDGE_PUBLISHES_PER_10S", "edge_publishes_per_10s", 10000,
          "publishes with one Authorization header (its SHA-256) in 10 s"),
    Limit("EDGE_LIMIT_RETRY_S", "edge_limit_retry_s", 30,
          "the wait a refused client is told: Retry-After, and an EventSource's retry: "
          "(jittered over once to twice this)"),
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """One kind of refusal: the backend of haproxy.cfg that answers it (its session count is
    the refusal's counter in ``show stat`` and HAProxy's Prometheus exporter), its status."""

    backend: str
    status: int
    reason: str


REFUSALS = (
    Refusal("refuse_stream_limit", 200,
            "an event stream over a per-address limit: 200 text/event-stream, a long retry:, "
            "X-Ssedge-Refused: limit (an EventSource comes back later, never closes)"),
    Refusal("refuse_request_limit", 429, "a request over the per-address rate: Retry-After"),
    Refusal("refuse_publish_limit", 429, "a publish over its token's rate: Retry-After"),
    Refusal("refuse_spelling", 400,
            "a path in a non-canonical spelling (//, dot segments, a trailing slash, "
            "percent-encoding other than %3A), an escape in a query parameter's name or in "
            "a topic= other than %3A, or an absolute-form HTTP/1 request line"),
    Refusal("refuse_replay_query", 400,
            "a replay URL with a parameter other than after, until, limit and access_token, "
            "one given twice, an id not in canonical form, or a limit other than the page"),
    Refusal("refuse_operator", 404, "an operator endpoint (/metrics, /readyz)"),
    Refusal("refuse_operator_topic", 401, "an ssedge.* topic (operator data) without a token"),
)

#: the default networks the limits do not apply to: the local stack's own clients
DEFAULT_EXEMPT = "127.0.0.1/32"


@dataclass(frozen=True, slots=True)
class Limits:
    """A deployment's values for ``LIMITS`` (by setting name), the networks exempt from them
    (comma-separated CIDRs; empty: none) and the replay page the relays ask for."""

    values: tuple[tuple[str, int], ...] = tuple((lim.setting, lim.default) for lim in LIMITS)
    exempt: str = DEFAULT_EXEMPT
    replay_page: int = 1000

    @classmethod
    def of(cls, settings: Any) -> Limits:
        """From a ``relay.settings.Settings``: its ``edge_*`` fields and ``replay_page``."""
        return cls(tuple((lim.setting, int(getattr(settings, lim.setting))) for lim in LIMITS),
                   str(settings.edge_limits_exempt), int(settings.replay_page))

    def but(self, exempt: str | None = None, **values: int) -> Limits:
        """These limits with some changed (by setting name), or other exempt networks."""
        unknown = set(values) - {lim.setting for lim in LIMITS}
        if unknown:
            raise ValueError(f"no such edge limit: {', '.join(sorted(unknown))}")
        merged = {**dict(self.values), **values}
        return Limits(tuple(merged.items()), self.exempt if exempt is None else exempt,
                      self.replay_page)

    def env(self) -> dict[str, str]:
        """``presetenv`` name -> value, for every limit and the replay page."""
        given = dict(self.values)
        out = {lim.env: str(given.get(lim.setting, lim.default)) for lim in LIMITS}
        out["EDGE_REPLAY_PAGE"] = str(self.replay_page)
        return out

    def networks(self) -> list[str]:
        return [n.strip() for n in self.exempt.split(",") if n.strip()]


#: the shipped limits, 127.0.0.1 exempt (``make up``, the tests' and benchmarks' edges)
DEFAULT = Limits()
