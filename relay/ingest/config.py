"""What ``ssedge ingest`` follows: topics and their upstream SSE endpoints.

From the command line (``--topic T --from [NAME=]URL …``) and/or a TOML file
(``SSEDGE_INGEST_FILE``)::

    [[ingest]]
    topic = "prices"
    from = ["http://server-a:9000/prices", "b=http://server-b:9000/prices"]

    [[ingest]]
    topic = "news"
    envelope = true             # data becomes JSON naming the upstream and its id

    [[ingest.from]]             # an upstream with a name and request headers
    name = "wire"
    url = "https://news.example/sse"
    headers = { Authorization = "Bearer abc" }

An upstream's **name** is its identity: its resume cursor and lease in Redis are keyed by
(topic, name), and clients see it in every event it sent. Without one it is the URL's
``host:port/path`` (never the query or credentials, which may hold secrets), so the same URL
on two ingest processes, or after a restart, is the same upstream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from relay.protocol import names
from relay.settings import SettingsError

NAME = re.compile(r"[A-Za-z0-9._:/~-]{1,200}")
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9._:/~-]")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class IngestTopic:
    topic: str
    upstreams: tuple[Upstream, ...]
    envelope: bool = False  # data becomes {"upstream", "id", "event", "data"} JSON


class _UpstreamEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str
    name: str = ""
    headers: dict[str, str] = {}


class _TopicEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    topic: str
    from_: list[str | _UpstreamEntry] = msgspec.field(name="from")
    envelope: bool = False


class _File(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ingest: list[_TopicEntry]


def default_name(url: str) -> str:
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    raw = f"{parts.hostname or ''}{port}{parts.path.rstrip('/')}"
    return _NOT_IN_NAME.sub("_", raw)[:200] or "upstream"


def upstream(url: str, name: str = "", headers: dict[str, str] | None = None) -> Upstream:
    """One upstream, checked: an http(s) URL, a usable name, header lines that cannot be
    used to inject others."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"bad upstream URL {url!r}: use http://host[:port]/path or https://")
    name = name or default_name(url)
    if not NAME.fullmatch(name):
        raise SettingsError(f"bad upstream name {name!r}: 1 to 200 of A-Z a-z 0-9 . _ : / ~ -")
    pairs = []
    for key, value in (headers or {}).items():
        if not _HEADER_NAME.fullmatch(key) or any(c in value for c in "\r\n\x00"):
            raise SettingsError(f"bad header {key!r} for upstream {name!r}")
        pairs.append((key, value))
    return Upstream(name, url, tuple(pairs))


def parse_from(value: str) -> Upstream:
    """``--from [NAME=]URL``: a name is whatever precedes ``=`` when that holds no ``:``."""
    head, eq, rest = value.partition("=")
    if eq and ":" not in head and "/" not in head:
        return upstream(rest, head)
    return upstream(value)


def topic(name: str, upstreams: list[Upstream], envelope: bool = False) -> IngestTopic:
    if not names.is_topic(name):
        raise SettingsError(f"bad topic {name!r}: {names.TOPIC_RULE}")
    if not upstreams:
        raise SettingsError(f"topic {name!r} has no upstream (--from URL)")
    given = [u.name for u in upstreams]
    twice = sorted({n for n in given if given.count(n) > 1})
    if twice:
        raise SettingsError(f"topic {name!r} lists upstream {twice[0]!r} twice; name them")
    return IngestTopic(name, tuple(upstreams), envelope)


def load_file(path: Path) -> list[IngestTopic]:
    try:
        parsed = msgspec.toml.decode(path.read_bytes(), type=_File)
    except OSError as exc:
        raise SettingsError(f"cannot read ingest file {path}: {exc.strerror}") from None
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise SettingsError(f"bad ingest file {path}: {exc}") from None
    out = []
    for entry in parsed.ingest:
        ups = [parse_from(u) if isinstance(u, str) else upstream(u.url, u.name, u.headers)
               for u in entry.from_]
        out.append(topic(entry.topic, ups, entry.envelope))
    return out


def merge(topics: list[IngestTopic]) -> list[IngestTopic]:
    """Every topic once (the command line and the file may both name it)."""
    by_topic: dict[str, IngestTopic] = {}
    for t in topics:
        seen = by_topic.get(t.topic)
        if seen is None:
            by_topic[t.topic] = t
        else:
            by_topic[t.topic] = topic(t.topic, [*seen.upstreams, *t.upstreams],
                                      seen.envelope or t.envelope)
    return list(by_topic.values())
