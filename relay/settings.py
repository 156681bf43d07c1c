"""One frozen settings object, built at start-up from ``SSEDGE_*`` variables and CLI flags.

Each field's default and meaning is next to it; README's settings table is generated from the
same list (``ssedge settings``). A bad value stops start-up with one line naming the setting.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from relay.protocol import names

PREFIX = "SSEDGE_"

Port = Annotated[int, Meta(ge=1, le=65535)]
Positive = Annotated[int, Meta(ge=1)]
NonNegative = Annotated[int, Meta(ge=0)]
Seconds = Annotated[float, Meta(gt=0, le=3600)]
# a comma-separated list of origins (scheme://host[:port]), or `*`, or nothing
_ORIGIN = r"https?://([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?"
_ORIGINS = rf"^(\*|({_ORIGIN})(\s*,\s*({_ORIGIN}))*)?$"
# a comma-separated list of topic patterns: topic characters and `*`
_PATTERN = names.TOPIC_PATTERN
_PATTERNS = rf"^({_PATTERN}(\s*,\s*{_PATTERN})*)?$"
# a comma-separated list of host:port (a host name, IPv4, or [IPv6])
_SEED = r"([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}"
_SEEDS = rf"^({_SEED}(\s*,\s*{_SEED})*)?$"
# a comma-separated list of networks: IPv4 or IPv6 addresses, each with an optional /prefix
_NETWORK = r"[0-9A-Fa-f:.]+(/[0-9]{1,3})?"
_NETWORKS = rf"^({_NETWORK}(\s*,\s*{_NETWORK})*)?$"


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # -- connections -------------------------------------------------------------------------
    redis_url: Annotated[str, Meta(pattern=r"^(redis|rediss|unix)://")] = "redis://127.0.0.1:6379/0"
    """Redis holding the streams (redis://, rediss:// or unix://)."""
    redis_cluster: Annotated[str, Meta(pattern=_SEEDS)] = ""
    """Redis Cluster seed nodes (host:port,host:port); when set, used instead of redis_url."""
    redis_read_url: Annotated[str, Meta(pattern=r"^((redis|rediss|unix)://.*)?$")] = ""
    """A replica of redis_url to read streams from (feed, metadata, history); empty: redis_url."""
    publish_token: str = ""
    """Static bearer token that may publish to every topic; empty: only JWT publish tokens."""
    host: str = "127.0.0.1"
    """Address the relay listens on."""
    port: Port = 8101
    """Port the relay listens on."""
    workers: Annotated[int, Meta(ge=1, le=64)] = 1
    """Granian worker processes (each has its own feed, ring and metrics)."""
    max_connections: Annotated[int, Meta(ge=16, le=1_000_000)] = 20_000
    """Connections one worker serves at once (Granian's backpressure; above it they wait)."""
    node_name: str = ""
    """Name in metrics and logs; empty means host:port."""
    max_streams: Positive = 10_000
    """Event streams one worker process serves at once; more are asked to come back later."""
    drain_s: Seconds = 10.0
    """On SIGTERM/SIGINT: readiness goes red and open streams are closed over this long."""
    drain_retry_ms: Annotated[int, Meta(ge=0, le=60_000)] = 500
    """The ``retry:`` a stream closed by a drain or its token's expiry gets: come back soon."""
    refused_retry_ms: Annotated[int, Meta(ge=1, le=600_000)] = 2000
    """A stream refused for a while is a 200 asking to come back after this (x0.5-1.5)."""
    redis_grace_s: Annotated[float, Meta(ge=0, le=3600)] = 15.0
    """Redis lost this long: the relay steps out (not ready, streams ended); less: rings serve."""
    replica_wait_s: Annotated[float, Meta(ge=0, le=600)] = 5.0
    """A stream whose Last-Event-ID the replica lacks waits this long for it, then is ended."""

    # -- the stream ------------------------------------------------------------------------
    retry_ms: Annotated[int, Meta(ge=0, le=600_000)] = 3000
    """Reconnection delay sent to clients in the first bytes of every stream."""
    heartbeat_s: Seconds = 15.0
    """A comment line is sent on every stream this often; keep it under 60 s idle timeouts."""
    ring_events: Annotated[int, Meta(ge=1, le=10_000_000)] = 10_000
    """Events kept per topic per process for fan-out, backfill and recent resumes."""
    ring_bytes: Annotated[int, Meta(ge=1024)] = 16 * 1024 * 1024
    """Bytes of framed events kept per topic per process."""
    client_backlog_bytes: Annotated[int, Meta(ge=1024)] = 1024 * 1024
    """Bytes a client may stay behind for over a second before it is closed (it resumes by id)."""
    send_max_bytes: Annotated[int, Meta(ge=1024)] = 256 * 1024
    """Most bytes of pending frames joined into one send."""
    client_queue_bytes: Annotated[int, Meta(ge=16 * 1024, le=64 * 1024 * 1024)] = 48 * 1024
    """Bytes of sends the relay holds for a client that does not read (sends: 1/8 of it)."""
    compression: Annotated[str, Meta(pattern=r"^(off|(gzip|deflate)(,(gzip|deflate))*)$")] = (
        "gzip,deflate")
    """Encodings a one-topic stream may be sent with (``off``: none): each topic's stream is
    compressed once and the same bytes go to every up-to-date client (docs/ARCHITECTURE.md)."""
    compression_level: Annotated[int, Meta(ge=1, le=9)] = 6
    """zlib level of each topic's shared compressor."""
    compression_epoch_bytes: Annotated[int, Meta(ge=1024)] = 256 * 1024
    """Bytes of frames after which a topic's compressor starts afresh: where a client that
    joins (or left the shared bytes) gets them again; until then it is sent its own, stored."""
    compression_epoch_s: Seconds = 5.0
    """The same bound in time: an epoch ends at the first wake-up (or heartbeat) after it."""
    topic_linger_s: Annotated[float, Meta(ge=0, le=3600)] = 10.0
    """How long a topic stays watched after its last client left (reconnects find it warm)."""
    max_topics: Positive = 10_000
    """Written (hot) topics one process watches at once; a new one above it is asked to retry."""
    max_cold_topics: Positive = 10_000
    """Topics never written (cold) one process watches at once; a new one above it: retry."""
    max_stream_topics: Annotated[int, Meta(ge=1, le=64)] = 16
    """Topics one stream may name (``/v1/streams/events?topic=a&topic=b``); more is 400."""
    feed_block_ms: Annotated[int, Meta(ge=10, le=60_000)] = 5000
    """Longest wait of the feed's blocking XREAD."""
    feed_read_count: Annotated[int, Meta(ge=1, le=100_000)] = 1000
    """Entries read per topic per XREAD."""
    feed_verify_s: Annotated[float, Meta(ge=0, le=3600)] = 5.0
    """How often the feed checks that no watched stream went back (deleted, failover); 0: never."""
    feed_check: Literal["every", "retention"] = "every"
    """Reads checked for trimmed entries they jumped: every one, or those retention could cause."""
    gc_young_objects: Annotated[int, Meta(ge=0, le=10_000_000)] = 50_000
    """Allocations between garbage-collector passes (Python: 700); each pass stalls streams."""

    # -- history and the replay service -------------------------------------------------
    replay_url: Annotated[str, Meta(pattern=r"^(https?://.+)?$")] = ""
    """Replay service URL for history older than the ring; empty reads Redis directly."""
    replay_page: Annotated[int, Meta(ge=1, le=100_000)] = 1000
    """Events per history page: what relays ask for and the replay service's default limit."""
    replay_page_bytes: Annotated[int, Meta(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    """Bytes of entries per history page: a page ends with the entry that crosses it."""
    replay_limit_max: Annotated[int, Meta(ge=1, le=100_000)] = 10_000
    """Largest ``limit`` the replay service accepts; more is 400."""
    replay_timeout_s: Seconds = 3.0
    """How long a relay waits for a replay page before reading Redis itself."""
    replay_cache_bytes: Annotated[int, Meta(ge=0)] = 16 * 1024 * 1024
    """Bytes of history pages a relay keeps (full pages until evicted, short ones briefly)."""
    replay_host: str = "127.0.0.1"
    """Address the replay service listens on."""
    replay_port: Port = 8201
    """Port the replay service listens on."""
    replay_open_max_age_s: NonNegative = 1
    """Cache lifetime of a replay page that reaches the stream's head (closed pages: a year)."""

    # -- publishing and retention ---------------------------------------------------------
    max_body_bytes: Annotated[int, Meta(ge=1, le=64 * 1024 * 1024)] = 1024 * 1024
    """Largest publish body; larger is 413. Also the largest event data ingest takes."""
    max_batch: Annotated[int, Meta(ge=1, le=100_000)] = 1000
    """Most events in one published array; more is 413."""
    retention_maxlen: NonNegative = 100_000
    """Approximate events kept per stream (XADD MAXLEN ~); 0 keeps all."""
    retention_max_age_s: NonNegative = 86_400
    """Events older than this are trimmed at each publish (XTRIM MINID ~); 0 turns it off."""
    idle_stream_s: NonNegative = 86_400
    """A topic's stream with no publish for this long is deleted (readers told); 0: kept."""
    publish_replicas: Annotated[int, Meta(ge=-1, le=16)] = -1
    """Replicas that must hold a publish before its 201 (WAIT); -1: 1 where the primary has one."""
    publish_replica_timeout_ms: Annotated[int, Meta(ge=1, le=60_000)] = 1000
    """How long a publish waits; then keyed: 503 (retry with the key), keyless: 201 unreplicated."""
    idempotency_ttl_s: Annotated[int, Meta(ge=1, le=30 * 86400)] = 86400
    """How long a publish's Idempotency-Key is kept: a retry within it gets the first answer."""

    # -- ingest: following upstream SSE servers ----------------------------------------
    ingest_file: str = ""
    """TOML file of the topics and upstreams ``ssedge ingest`` follows, with its flags' ones."""
    ingest_host: str = "127.0.0.1"
    """Address ``ssedge ingest`` serves ``/metrics``, ``/healthz`` and ``/readyz`` on."""
    ingest_port: Annotated[int, Meta(ge=0, le=65535)] = 8301
    """Port for them; 0 takes a free one (logged)."""
    ingest_retry_ms: Annotated[int, Meta(ge=0, le=600_000)] = 3000
    """Wait before reconnecting to an upstream, until it sends its own ``retry:``."""
    ingest_retry_max_ms: Annotated[int, Meta(ge=0, le=3_600_000)] = 60_000
    """Longest upstream ``retry:`` obeyed; an upstream asking for more is reconnected after this."""
    ingest_redirect_hosts: str = ""
    """Hosts an upstream may redirect to besides its own origin (comma-separated, `*`: any)."""
    ingest_backoff_max_s: Seconds = 30.0
    """Longest wait between failed attempts to reach an upstream (backoff with jitter)."""
    ingest_connect_timeout_s: Seconds = 10.0
    """How long connecting to an upstream and reading its answer's headers may take."""
    ingest_idle_timeout_s: Seconds = 90.0
    """An upstream stream silent this long (not even a comment) is reconnected."""
    ingest_lease_ms: Annotated[int, Meta(ge=100, le=600_000)] = 5000
    """Lease on an upstream: another ingest process takes it over this long after a crash."""

    # -- HTTP caching -----------------------------------------------------------------------
    metadata_max_age_s: NonNegative = 1
    """Cache lifetime of stream metadata."""
    handshake_max_age_s: NonNegative = 30
    """Cache lifetime of the handshake."""
    cors_origin: Annotated[str, Meta(pattern=_ORIGINS)] = "*"
    """CORS: `*` (any origin, no cookies), or listed origins (with cookies); empty: none."""

    # -- private topics and tokens (relay/web/auth.py) -------------------------------------
    private_topics: Annotated[str, Meta(pattern=_PATTERNS)] = ""
    """Topic patterns (`*` = any run) that need a subscriber JWT; empty: all public."""
    jwt_secret: str = ""
    """HMAC secret (32+ bytes) for HS256/HS384/HS512 tokens; empty accepts no HMAC token."""
    jwt_public_key: str = ""
    """RSA or EC public key (a PEM file's path, or the PEM) for RS, PS and ES tokens."""
    jwt_algorithms: str = "HS256,RS256,ES256"
    """Signature algorithms accepted: HS, RS, PS or ES with 256, 384 or 512; never `none`."""
    jwt_audience: str = ""
    """Required `aud` claim; empty: tokens that carry an `aud` are refused."""
    jwt_issuer: str = ""
    """Required `iss` claim; empty: not checked."""
    jwt_leeway_s: Annotated[float, Meta(ge=0, le=300)] = 5.0
    """Clock skew allowed when checking `exp`, `nbf` and `iat`."""
    jwt_require_exp: bool = True
    """Refuse tokens without `exp` (a stream ends when its token expires)."""
    jwks_url: Annotated[str, Meta(pattern=r"^(https?://[^\s/?#]+[^\s#]*)?$")] = ""
    """JWK Set URL of RS/PS/ES keys, chosen by a token's `kid`; empty: none."""
    jwks_refresh_s: Annotated[float, Meta(ge=1, le=86400)] = 300.0
    """How often the JWKS is fetched again (a removed key stops verifying within this)."""
    jwks_min_interval_s: Annotated[float, Meta(ge=0.1, le=3600)] = 10.0
    """Least time between two fetches, so a token with an unknown `kid` cannot force more."""
    token_refresh_s: Seconds = 60.0
    """A stream read with a token is told this long before `exp` (at most half its life left)."""
    auth_cookie_samesite: Annotated[str, Meta(pattern=r"^(Lax|Strict|None)$")] = "Lax"
    """SameSite of the `ssedge_auth` cookie set by `POST /v1/auth/cookie` (None adds Secure)."""
    auth_cookie_secure: bool = True
    """Mark that cookie Secure (HTTPS only; browsers take it from http://localhost too)."""

    # -- vanished peers (relay/node/listener.py) ------------------------------------------------
    # A client gone without FIN or RST is let go within heartbeat_s + tcp_user_timeout_s.
    tcp_user_timeout_s: Annotated[float, Meta(ge=0, le=3600)] = 30.0
    """Data unacknowledged, or a window shut, this long drops a connection; 0: kernel's 15 min."""
    tcp_keepalive_s: Annotated[int, Meta(ge=0, le=32767)] = 60
    """An idle connection gets TCP keepalive probes after this, 3 a third of it apart; 0: off."""
    tcp_send_buffer_bytes: Annotated[int, Meta(ge=0, le=64 * 1024 * 1024)] = 128 * 1024
    """Kernel send buffer per connection (SO_SNDBUF; Linux doubles it); 0: autotuned to 4 MiB."""

    # -- operators (relay/node/admin.py, audience.py, revocation.py) ------------------------
    admin_token: str = ""
    """Bearer token of the operator API (/v1/admin/); empty: the operator API is off (404)."""
    audience_period_s: Annotated[float, Meta(ge=0.2, le=60)] = 2.0
    """Each relay process writes its open streams per topic to Redis this often."""
    revocation_reload_s: Annotated[float, Meta(ge=0.5, le=3600)] = 10.0
    """Revocations are read again from Redis this often (beside their Pub/Sub broadcast)."""
    trusted_proxies: Annotated[str, Meta(pattern=r"^[0-9A-Fa-f:./,\s]*$")] = "127.0.0.0/8,::1/128"
    """Networks whose X-Forwarded-For the access log believes (comma-separated CIDRs)."""

    # -- logs (relay/logs.py) ----------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Least severe log lines written: debug, info, warning or error."""
    log_format: Literal["text", "json"] = "text"
    """Log lines as text, or as one JSON object per line (for journald, Loki, Elasticsearch)."""
    access_log: bool = False
    """One log line per HTTP request: method, path (never the query), status, duration, client."""

    # -- the edge's per-client limits (relay/edge/haproxy/limits.py, docs/SECURITY.md) -------
    # HAProxy's stick tables enforce them (``ssedge up`` and the rendered haproxy.cfg).
    edge_streams_per_source: Positive = 5000
    """Event streams open at once from one client address at the edge (a NAT holds many)."""
    edge_stream_opens_per_10s: Positive = 500
    """Event streams one client address may ask the edge for in 10 s, refused ones counted."""
    edge_requests_per_10s: Positive = 1000
    """Other requests (handshake, metadata, replay, pages) from one address in 10 s; then 429."""
    edge_publishes_per_10s: Positive = 10_000
    """Publishes with one Authorization header (its SHA-256) in 10 s at the edge; then 429."""
    edge_limit_retry_s: Annotated[int, Meta(ge=1, le=3600)] = 30
    """Wait told to a client over a limit: Retry-After; retry: of a stream, x1-2 (jittered)."""
    edge_limits_exempt: Annotated[str, Meta(pattern=_NETWORKS)] = "127.0.0.1/32"
    """Client networks (CIDRs, comma-separated) the edge's limits skip; empty: none."""

    @property
    def node(self) -> str:
        return self.node_name or f"{self.host}:{self.port}"

    @property
    def read_url(self) -> str:
        """Where streams are read: the replica when one is named, else the primary."""
        return self.redis_read_url or self.redis_url

    def replicas(self, connected: int) -> int:
        """Replicas a publish waits for: ``publish_replicas``, or with -1 one when the primary
        has any (``connected``, as its INFO said lately; a cluster's primaries always do)."""
        if self.publish_replicas >= 0:
            return self.publish_replicas
        return 1 if self.redis_cluster or connected else 0


def proxy_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The networks of ``trusted_proxies`` (ValueError naming a bad one)."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False)
                 for part in text.split(",") if part.strip())


class SettingsError(ValueError):
    """A setting that stops start-up; the message is one line naming it."""


def env_name(field: str) -> str:
    return PREFIX + field.upper()


#: ``SSEDGE_<NAME>_FILE`` holds the path of a file whose content is the setting (Docker and
#: Kubernetes secrets, systemd credentials): secrets stay out of the environment and of ps
FILE_SUFFIX = "_FILE"


def file_variables() -> list[str]:
    """The ``*_FILE`` variable of every setting."""
    return [env_name(f.name) + FILE_SUFFIX for f in msgspec.structs.fields(Settings)]


def _from_file(variable: str, path: str) -> str:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SettingsError(f"bad setting {variable}={path!r}: cannot read it: {reason}") from None
    # a file written by an editor or `echo` ends with a newline that is not part of a secret
    return text.removesuffix("\n").removesuffix("\r")


def fields() -> list[tuple[str, Any, str]]:
    """(name, default, description) of every setting, in order."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    tree = ast.parse(inspect.getsource(Settings))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
            docs[node.target.id] = str(nxt.value.value)
    return [(f.name, f.default, docs.get(f.name, "")) for f in msgspec.structs.fields(Settings)]


def load(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, then ``overrides`` (CLI flags; ``None`` means unset)."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    known = {f.name for f in msgspec.structs.fields(Settings)}
    for name in known:
        value = environ.get(env_name(name))
        path = environ.get(env_name(name) + FILE_SUFFIX)
        if path is not None:
            if value is not None:
                raise SettingsError(f"set {env_name(name)} or {env_name(name)}{FILE_SUFFIX}, "
                                    "not both")
            value = _from_file(env_name(name) + FILE_SUFFIX, path)
        if value is not None:
            raw[name] = value
    for name, value in overrides.items():
        if name not in known:
            raise SettingsError(f"unknown setting {name}")
        if value is not None:
            raw[name] = value
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_one_line(exc, raw)) from None
    try:
        proxy_networks(settings.trusted_proxies)
    except ValueError as exc:
        raise SettingsError(f"bad setting {env_name('trusted_proxies')}="
                            f"{settings.trusted_proxies!r}: {exc}") from None
    if settings.redis_read_url and settings.redis_cluster:
        # one replica of one primary: a cluster's replicas (one per shard) are not read yet
        raise SettingsError(f"bad setting {env_name('redis_read_url')}="
                            f"{settings.redis_read_url!r}: not with "
                            f"{env_name('redis_cluster')} (a cluster's replicas are not read)")
    return settings


def _one_line(exc: msgspec.ValidationError, raw: Mapping[str, Any]) -> str:
    message = str(exc)
    field = None
    if "`$." in message:
        field = message.split("`$.", 1)[1].split("`", 1)[0].split("[", 1)[0]
    if field is None:
        return f"bad settings: {message}"
    reason = message.split(" - at `", 1)[0]
    choices = typing.get_args(typing.get_type_hints(Settings).get(field))
    if reason.startswith("Invalid enum value") and choices:
        reason += f" (one of: {', '.join(map(str, choices))})"
    return f"bad setting {env_name(field)}={raw.get(field)!r}: {reason}"


def to_environ(settings: Settings) -> dict[str, str]:
    """The ``SSEDGE_*`` variables that rebuild ``settings`` (for worker processes)."""
    return {
        env_name(f.name): str(getattr(settings, f.name))
        for f in msgspec.structs.fields(Settings)
    }
